"""Where the torch backend's reductions run (MULTIWRITE_REDUCE, torch_backend/native.py): the policy is
pure logic on the topology, so it is tested here; the reductions themselves in tests/test_reduce_mp.py."""
import pytest

from multiwrite import _config
from multiwrite.topology import Topology
from multiwrite.torch_backend.native import native_reductions


def _topo(per_node, nodes):
    node_of = [r // per_node for r in range(per_node * nodes)]
    return Topology.from_keys(0, [f"host{n}" for n in node_of])


@pytest.mark.parametrize("per_node,nodes,native", [(4, 2, True), (2, 4, True), (1, 2, True), (1, 8, False),
                                                   (1, 3, False), (8, 1, True)])
def test_auto_sends_one_rank_nodes_beyond_two_to_gloo(per_node, nodes, native):
    assert native_reductions(_topo(per_node, nodes), "auto") is native


@pytest.mark.parametrize("choice", ["native", "gloo"])
def test_forced_choice_wins(choice):
    for per_node, nodes in ((1, 8), (4, 2)):
        assert native_reductions(_topo(per_node, nodes), choice) is (choice == "native")


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("MULTIWRITE_REDUCE", "ring")
    with pytest.raises(ValueError, match="MULTIWRITE_REDUCE='ring'"):
        _config.reduce_choice()
    assert "MULTIWRITE_REDUCE" in [name for name, _ in _config.AGREED]
