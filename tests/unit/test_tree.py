"""The relay trees of multiwrite/engine/tree.py, on random topologies and destination sets: every
destination is reached exactly once, one copy crosses to each remote node (MultiWrite) or one per
remote rank (unicast), relays sit on the node they serve, and the answer depends only on (source,
destinations, topology), the same on every rank."""
from hypothesis import given, settings, strategies as st

from multiwrite.engine import tree
from multiwrite.topology import Topology


@st.composite
def topologies(draw):
    """A Topology of up to 24 ranks on up to 6 nodes of any sizes, in any placement of ranks."""
    P = draw(st.integers(1, 24))
    keys = draw(st.lists(st.integers(0, 5), min_size=P, max_size=P))
    return Topology.from_keys(0, keys)


@st.composite
def cases(draw):
    topo = draw(topologies())
    P = topo.world_size
    src = draw(st.integers(0, P - 1))
    dests = draw(st.lists(st.integers(0, P - 1), max_size=2 * P))
    return topo, src, dests


@settings(max_examples=400, deadline=None)
@given(cases(), st.sampled_from(["spread", "leader"]))
def test_multiwrite_tree_reaches_every_destination_once(case, policy):
    topo, src, dests = case
    relay = getattr(tree, policy)
    own, hops = tree.plan(topo, src, dests, relay=relay)
    reached = list(own) + [r for hop in hops for r in hop.ranks]
    assert sorted(reached) == sorted(set(dests))                      # each destination once
    assert all(topo.node_of[r] == topo.node_of[src] for r in own)
    nodes = [hop.node for hop in hops]
    assert len(nodes) == len(set(nodes)) and topo.node_of[src] not in nodes   # one copy per remote node
    assert sorted(nodes) == sorted({topo.node_of[d] for d in dests} - {topo.node_of[src]})
    for hop in hops:
        assert hop.relay in topo.node_ranks[hop.node]                 # the relay is on the node it serves
        assert hop.relay == relay(topo, src, hop.node)
        assert all(topo.node_of[r] == hop.node for r in hop.ranks) and list(hop.ranks) == sorted(hop.ranks)
        assert hop.bitmap == sum(1 << topo.local_rank_of[r] for r in hop.ranks)
    # stateless: the same answer for the same set, in any order and with repeats
    assert tree.plan(topo, src, sorted(set(dests), reverse=True) + list(dests), relay=relay) == (own, hops)


@settings(max_examples=300, deadline=None)
@given(cases(), st.booleans())
def test_unicast_sends_one_copy_per_remote_rank(case, direct):
    topo, src, dests = case
    own, hops = tree.plan(topo, src, dests, relay=None if direct else tree.leader, per_rank=True)
    remote = sorted({d for d in dests if topo.node_of[d] != topo.node_of[src]})
    assert sorted(r for hop in hops for r in hop.ranks) == remote and all(len(hop.ranks) == 1 for hop in hops)
    for hop in hops:
        (r,) = hop.ranks
        assert hop.relay == (r if direct else topo.node_ranks[hop.node][0])
        assert hop.bitmap == 1 << topo.local_rank_of[r]
    assert sorted(own) == sorted({d for d in dests if topo.node_of[d] == topo.node_of[src]})


@settings(max_examples=300, deadline=None)
@given(topologies())
def test_senders_and_relays_agree(topo):
    """Every rank derives, on its own, which sources it relays (relayed_by) and every source derives
    where to send (plan): the two agree, and each (source, remote node) pair has exactly one relay."""
    P = topo.world_size
    for src in range(P):
        _, hops = tree.plan(topo, src, range(P))
        for hop in hops:
            assert src in tree.relayed_by(topo, hop.relay, range(P))
            others = [r for r in topo.node_ranks[hop.node] if r != hop.relay]
            assert all(src not in tree.relayed_by(topo, r, range(P)) for r in others)
    # every remote source is relayed by exactly one rank of each node
    for node, ranks in enumerate(topo.node_ranks):
        relayed = [s for r in ranks for s in tree.relayed_by(topo, r, range(P))]
        assert sorted(relayed) == [s for s in range(P) if topo.node_of[s] != node]
