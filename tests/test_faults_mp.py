"""The fault matrix: kill, stop, late init and a bad setting on one rank, under mpirun and torchrun
(4 ranks as 2 emulated nodes of 2). For each case, the error every rank must see and a bound on the
time it takes (tests/mp/faults_prog.py prints one line per rank; its clock starts when the rank
starts). The faulty rank is rank 3.

* a bad setting (invalid, or one that must agree and differs) is found at start-up by every rank at
  once, long before the timeout: the faulty rank raises its ValueError / MismatchError, the others a
  MismatchError naming rank 3 and the setting;
* a late rank, a stopped rank and a killed rank make every survivor raise MultiwriteTimeout or
  PeerFailure (never a MismatchError: nothing disagreed) within a bound of the timeout; torchrun's
  agent stops the survivors itself as soon as a worker dies (they say so).
"""
import re

import pytest

import _launch

TIMEOUT = 5            # MULTIWRITE_TIMEOUT of the runs where a rank goes missing
LINE = re.compile(r"FAULT rank (\d+): (\w+)([^\n]*?)(?=FAULT rank |\n|$)")


def _run(launcher, case, timeout_s, linger_s=TIMEOUT + 3):
    if not _launch.have(launcher):
        pytest.skip(f"{launcher} not on PATH")
    cmd = _launch.command(launcher, 4, "faults_prog.py", [case])
    if launcher == "mpirun" and case == "kill":
        cmd[1:1] = ["--with-ft", "ulfm"]   # else prterun ends the job itself when a process dies
    env = {"MULTIWRITE_RANKS_PER_NODE": 2, "MULTIWRITE_TIMEOUT": timeout_s, "FAULT_LINGER_S": linger_s}
    code, out, took = _launch.run_command(cmd, env, timeout=180)
    assert code != -999, out[-6000:]
    seen = {}
    for m in LINE.finditer(out):
        rank, kind = int(m.group(1)), m.group(2)
        if kind in ("sending", "terminated") and rank in seen:
            continue                       # a rank's own error line wins over a later termination
        rest = m.group(3)
        took = re.match(r" after ([0-9.]+) s", rest)
        seen[rank] = (kind, float(took.group(1)) if took else 0.0, rest.split(": ", 1)[1] if ": " in rest else "")
    return seen, out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
@pytest.mark.parametrize("case,setting", [("bad_piece", "MULTIWRITE_PIECE_KIB"), ("bad_timeout", "MULTIWRITE_TIMEOUT"),
                                          ("bad_spin", "MULTIWRITE_SPIN_US"), ("bad_transport", "transports")])
def test_bad_setting_on_one_rank_fails_every_rank_at_once(launcher, case, setting):
    seen, out = _run(launcher, case, 60, linger_s=3)        # a timeout that must play no part
    assert set(seen) == {0, 1, 2, 3}, out[-6000:]
    for r, (kind, t, msg) in seen.items():
        invalid = case in ("bad_timeout", "bad_spin")
        expected = "ValueError" if invalid and r == 3 else "MismatchError"
        assert kind == expected and setting in msg, (r, seen[r], out[-4000:])
        if r != 3 and invalid:
            assert "rank 3 cannot start" in msg, (r, msg)
        assert t < 30, f"rank {r} took {t:.1f} s to fail (the timeout is 60 s)"


def _survivors_fail_honestly(seen, out, launcher, fault_at, allow_terminated):
    for r in (0, 1, 2):
        assert r in seen, f"rank {r} said nothing:\n{out[-6000:]}"
        kind, t, msg = seen[r]
        if kind == "terminated" and allow_terminated:
            continue
        assert kind in ("MultiwriteTimeout", "PeerFailure"), (r, seen[r], out[-4000:])
        assert t < fault_at + 2 * TIMEOUT + 15, f"rank {r} took {t:.1f} s (timeout {TIMEOUT} s): {msg}"


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_late_init(launcher):
    """Rank 3 starts two timeouts late: every other rank's init gives up after the timeout."""
    seen, out = _run(launcher, "late_init", TIMEOUT)
    _survivors_fail_honestly(seen, out, launcher, 0, allow_terminated=False)
    for r in (0, 1, 2):
        assert "within 5s" in seen[r][2] and ("initialization" in seen[r][2]), seen[r]
    if launcher == "torchrun":
        assert all("rank(s) 3 did not arrive" in seen[r][2] for r in (0, 1, 2)), seen


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_stopped_rank(launcher):
    """Rank 3 is stopped (alive, silent) in its 4th round of operators: only timeouts can end the
    others' waits; the ranks of its node name it."""
    seen, out = _run(launcher, "stop", TIMEOUT)
    assert "FAULT rank 3: sending myself SIGSTOP" in out, out[-4000:]
    _survivors_fail_honestly(seen, out, launcher, 15, allow_terminated=False)
    assert all(seen[r][0] == "MultiwriteTimeout" for r in (0, 1, 2)), seen
    assert "rank(s) [3] of this node did not arrive" in seen[2][2], seen[2]


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_killed_rank(launcher):
    """Rank 3 SIGKILLs itself in its 4th round: under mpirun (ULFM) every survivor reports a dead peer
    or a timeout, never a size mismatch; under torchrun the agent stops the survivors at once."""
    seen, out = _run(launcher, "kill", TIMEOUT)
    assert "FAULT rank 3: sending myself SIGKILL" in out, out[-4000:]
    _survivors_fail_honestly(seen, out, launcher, 15, allow_terminated=launcher == "torchrun")
    if launcher == "mpirun":
        assert any(seen[r][0] == "PeerFailure" and "rank 3" in seen[r][2] for r in (0, 1, 2)), seen
