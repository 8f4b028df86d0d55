"""python -m multiwrite.stress on 4 ranks with emulated nodes (2 x 2): a short verified run (0 wrong
bytes, summary with latencies and RSS), and the fault options: a killed rank and a hung rank must make
the survivors exit with a clear error within the timeout, never hang. Each launch has a hard timeout."""
import json
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_bench_mp import run_module, skip_missing  # noqa: E402

EMULATED = {"MULTIWRITE_RANKS_PER_NODE": 2}
# Open MPI 5 (PRRTE) aborts the whole job when a process dies, unless fault tolerance (ULFM) is on:
# then the survivors' MPI calls fail with MPI_ERR_PROC_FAILED and each reports it.
MPIRUN_FT = ["--with-ft", "ulfm"]


def test_stress_20s_no_wrong_bytes(tmp_path):
    skip_missing("mpirun")
    js = tmp_path / "stress.json"
    code, out, took = run_module("mpirun", 4, "multiwrite.stress",
                                 ["--duration", "20s", "--warmup", "30", "--max-bytes", "256K", "--max-tokens", "96",
                                  "--max-hidden", "1024", "--progress-interval", "5", "--json", str(js)],
                                 env=EMULATED, timeout=120)
    assert code == 0, out[-6000:]
    assert "RESULT: PASS (0 wrong bytes)" in out and "wrong bytes: 0" in out, out[-3000:]
    assert "%" in out and "p50/p99 ms" in out            # progress bar lines on stderr
    doc = json.loads(js.read_text())
    assert doc["wrong_bytes"] == 0 and doc["bytes_verified"] > 0 and doc["duration_s"] >= 20
    assert all(doc["ops"][op]["count"] > 0 for op in ("allgather", "multiwrite", "dispatch", "combine")), doc["ops"]
    assert len(doc["rss"]) == 4 and all(r["end_mib"] > 0 for r in doc["rss"])
    assert "max RSS growth after warm-up:" in out and "growth_pct" in doc["rss"][0], out[-3000:]
    assert doc["max_rss_growth_pct"] is not None and doc["warmup_steps"] > doc["warmup"]   # + max-size prologue
    if doc["steps"] > doc["warmup_steps"]:
        # the warm-up prologue runs every op at its largest size: the grow-only buffers are final then
        for r in doc["rss"]:
            assert r["buffers_mib"]["warm"] == r["buffers_mib"]["end"], r
        assert "unchanged after warm-up on every rank" in out, out[-3000:]


def test_stress_delayed_rank_stays_correct():
    skip_missing("torchrun")
    code, out, took = run_module("torchrun", 4, "multiwrite.stress",
                                 ["--duration", "5s", "--warmup", "5", "--max-bytes", "64K", "--max-tokens", "32",
                                  "--max-hidden", "256", "--delay-rank", "1", "--delay-ms", "20"],
                                 env=EMULATED, timeout=90)
    assert code == 0, out[-6000:]
    assert "delay rank 1 by 20 ms" in out and "RESULT: PASS" in out, out[-3000:]


@pytest.mark.parametrize("launcher", ["torchrun", "mpirun"])
def test_stress_killed_rank_survivors_fail_clearly(launcher):
    """Rank 3 SIGKILLs itself after 4 s: every survivor (ranks 0, 1, 2) reports the failure, and the
    job exits non-zero well within the timeout. torchrun: its agent SIGTERMs the survivors at once
    (each says so, or reports its own Gloo error if faster). mpirun: each survivor's own error
    ('FAILED in step #...', exit 3), launched with --with-ft ulfm (otherwise prterun aborts the
    job at once): the survivors' MPI calls fail with MPI_ERR_PROC_FAILED naming the dead rank, or
    MPI_ERR_REVOKED when another survivor revoked the communicator, or a wait times out (a node-local
    wait for rank 3, or a wait for a survivor stuck there), or a node peer's failure is shared."""
    skip_missing(launcher)
    timeout_s = 10
    code, out, took = run_module(launcher, 4, "multiwrite.stress",
                                 ["--duration", "60s", "--max-bytes", "64K", "--max-tokens", "32",
                                  "--max-hidden", "256", "--kill-rank", "3", "--at", "4s",
                                  "--timeout", str(timeout_s)],
                                 launcher_args=MPIRUN_FT if launcher == "mpirun" else (),
                                 env=EMULATED, timeout=90)
    assert code not in (0, -999), out[-6000:]
    assert "rank 3: sending myself SIGKILL" in out, out[-6000:]
    assert took < 4 + 2 * timeout_s + 20, f"survivors took {took:.0f}s to exit"
    if launcher == "torchrun":
        # torchrun's agent SIGTERMs the other workers as soon as one dies (monitor interval 0.2 s): a
        # survivor reports either its own error (Gloo: connection closed) or that SIGTERM.
        assert set(re.findall(r"stress: rank (\d+): FAILED", out)) >= {"0", "1", "2"}, out[-6000:]
    else:
        # (ranks share the output pipe: a line may hold the end of another rank's message)
        failed = re.findall(r"stress: rank \d+: FAILED in step #[^\n]*?(?=stress: rank |\n|$)", out)
        survivors = set(re.findall(r"stress: rank (\d+): FAILED in step #", out))
        assert survivors >= {"0", "1", "2"}, out[-6000:]       # each survivor's own clear error
        # someone names rank 3: MPI's dead peer, or the node-local wait it never arrived at (a survivor
        # that was not exchanging with rank 3 times out waiting for a survivor stuck in that wait)
        assert any(re.search(r"dead peer: rank 3|rank\(s\) \[(\d+, )*3\]", line) for line in failed), failed


def test_stress_hung_rank_times_out():
    """Rank 3 stops (SIGSTOP: alive, sockets open): only the runtime's timeouts can save the others;
    all three survivors must fail with MultiwriteTimeout within MULTIWRITE_TIMEOUT (+ slack)."""
    skip_missing("mpirun")
    timeout_s = 6
    code, out, took = run_module("mpirun", 4, "multiwrite.stress",
                                 ["--duration", "60s", "--max-bytes", "64K", "--max-tokens", "32", "--max-hidden", "256",
                                  "--hang-rank", "3", "--at", "3s", "--timeout", str(timeout_s)],
                                 env=EMULATED, timeout=90)
    assert code not in (0, -999), out[-6000:]
    assert set(re.findall(r"stress: rank (\d+): FAILED in step #", out)) >= {"0", "1", "2"}, out[-6000:]
    failed = re.findall(r"stress: rank \d+: FAILED in step #[^\n]*?(?=stress: rank |\n|$)", out)
    assert all("MultiwriteTimeout" in line and "timed out after 6s" in line for line in failed), failed
    assert took < 3 + 3 * timeout_s + 20, f"survivors took {took:.0f}s to exit"
