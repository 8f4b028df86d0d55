"""python -m multiwrite.stress on 4 ranks with emulated nodes (2 x 2): a short verified run (0 wrong
bytes, summary with latencies and RSS), and the fault options: a killed rank and a hung rank must make
the survivors exit with a clear error within the timeout, never hang. Each launch has a hard timeout."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_bench_mp import run_module, skip_missing  # noqa: E402

EMULATED = {"MULTIWRITE_RANKS_PER_NODE": 2}


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
    """Rank 3 SIGKILLs itself after 4 s. torchrun (Gloo): every survivor reports the failure itself
    (exit 3, 'FAILED in step #...'). mpirun: Open MPI aborts the job as soon as the peer's socket
    closes and prterun names the dead rank. Either way: non-zero exit, well within the timeout."""
    skip_missing(launcher)
    timeout_s = 10
    code, out, took = run_module(launcher, 4, "multiwrite.stress",
                                 ["--duration", "60s", "--max-bytes", "64K", "--max-tokens", "32", "--max-hidden", "256",
                                  "--kill-rank", "3", "--at", "4s", "--timeout", str(timeout_s)],
                                 env=EMULATED, timeout=90)
    assert code not in (0, -999), out[-6000:]
    assert "rank 3: sending myself SIGKILL" in out, out[-6000:]
    assert took < 4 + 2 * timeout_s + 20, f"survivors took {took:.0f}s to exit"
    if launcher == "torchrun":
        survivors = {r for r in (0, 1, 2) if f"stress: rank {r}: FAILED in step #" in out}
        assert survivors, out[-6000:]         # the survivors' own clear error (Gloo: connection closed)
    else:
        clear = ("exited on signal 9", "peer process has unexpectedly disconnected", "FAILED in step #")
        assert any(c in out for c in clear), out[-6000:]


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
    failed = [line for line in out.splitlines() if "FAILED in step #" in line]
    assert {line.split("rank ")[1].split(":")[0] for line in failed} >= {"0", "1", "2"}, out[-6000:]
    assert all("MultiwriteTimeout" in line and "timed out after 6s" in line for line in failed), failed
    assert took < 3 + 3 * timeout_s + 20, f"survivors took {took:.0f}s to exit"
