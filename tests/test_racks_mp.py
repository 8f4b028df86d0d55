"""The rack level of the topology under mpirun and torchrun (tests/mp/racks_prog.py): racks from each
rank's MULTIWRITE_RACK, mw.stats() bytes per tier after an all_gather, and the errors every rank
raises at mw.init() when the ranks of a node disagree or a host is missing from the topology file.
4 ranks per run, each with a hard timeout (tests/_launch.py)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402


def _run(launcher, case, per_node):
    if not _launch.have(launcher if launcher == "mpirun" else sys.executable):
        pytest.skip(f"{launcher} not installed")
    env = {"MULTIWRITE_RANKS_PER_NODE": per_node, "MULTIWRITE_RACK": "", "MULTIWRITE_TOPOLOGY": ""}
    out = _launch.check(launcher, 4, "racks_prog.py", [case], env=env, timeout=180)
    print(out)
    assert out.count(f"racks {case} OK") == 4, out[-6000:]
    return out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_racks_and_bytes_per_tier(launcher):
    out = _run(launcher, "tiers", 1)
    assert "num_racks=2 ('a': nodes 0, 1; 'b': nodes 2, 3)" in out


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_ranks_of_a_node_in_different_racks(launcher):
    out = _run(launcher, "disagree", 2)
    assert out.count("MismatchError") == 4, out[-6000:]


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_host_missing_from_topology_file(launcher):
    out = _run(launcher, "missing_host", 2)
    assert out.count("ValueError") == 1 and out.count("MismatchError") == 3, out[-6000:]
