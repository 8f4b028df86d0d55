"""Multi-process tests of MoE dispatch/combine (4 ranks as 2 nodes), under mpirun and torchrun."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_dispatch_combine(launcher):
    out = _launch.check(launcher, 4, "moe_prog.py", env={"MULTIWRITE_RANKS_PER_NODE": 2}, timeout=300)
    assert "moe OK" in out


def test_dispatch_combine_unequal_nodes():
    out = _launch.check("mpirun", 5, "moe_prog.py", env={"MULTIWRITE_RANKS_PER_NODE": 3}, timeout=300)
    assert "moe OK" in out
