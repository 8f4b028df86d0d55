"""Relay trees: which copies of a payload cross the network, and who relays them.

A tree is derived statelessly from (source, destination ranks, topology): no group creation, no setup
call, no state, and the same answer on every rank, so senders and relays agree without exchanging
anything, and a new destination set costs nothing. A payload crosses to each remote node that holds a
destination once, to one relay rank of that node, which fans it out to the node's destination ranks
through shared memory; destinations on the source's own node are written through shared memory
directly (docs/design.md, "The path of one packet").

Relay policies (who receives a node's copy):

* ``spread``: node m's relay for source s is the node's local rank s mod L_m. Used by the collectives,
  where every rank of a node receives at once: the receive work is spread over the node's ranks.
* ``leader``: the node's first rank. Used by the one-sided windows, whose relay is a long-lived
  service thread, one per node.

With ``per_rank`` (unicast mode, the in-house baseline) there is one copy per destination rank
instead: to the rank itself (``relay=None``) or to its node's relay with a one-rank bitmap.
"""
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Tuple


@dataclass(frozen=True)
class Hop:
    """One copy that crosses the network: to rank ``relay`` of ``node``, for the destination ranks
    ``ranks`` of that node (ascending; ``bitmap``: bit i = local rank i of the node)."""
    node: int
    relay: int
    ranks: Tuple[int, ...]
    bitmap: int


def spread(topo, src: int, node: int) -> int:
    """The rank of ``node`` that relays ``src``'s copies to that node (collectives)."""
    ranks = topo.node_ranks[node]
    return ranks[src % len(ranks)]


def leader(topo, src: int, node: int) -> int:
    """The first rank of ``node`` (the windows' relay service)."""
    return topo.node_ranks[node][0]


Relay = Callable[[object, int, int], int]


def bitmap_of(topo, ranks: Iterable[int]) -> int:
    """The destination bitmap of ``ranks`` (all on one node): bit i = local rank i."""
    bits = 0
    for r in ranks:
        bits |= 1 << topo.local_rank_of[r]
    return bits


def plan(topo, src: int, dests: Iterable[int], *, relay: Optional[Relay] = spread,
         per_rank: bool = False) -> Tuple[Tuple[int, ...], List[Hop]]:
    """(destinations on ``src``'s own node, the hops that cross the network), in node order.

    One hop per remote node that holds a destination (relayed by ``relay``), or with ``per_rank`` one
    per remote destination rank (to the rank itself when ``relay`` is None). Duplicates in ``dests``
    count once."""
    by_node = {}
    for d in sorted(set(int(d) for d in dests)):
        by_node.setdefault(topo.node_of[d], []).append(d)
    own = tuple(by_node.pop(topo.node_of[src], ()))
    hops = []
    for node in sorted(by_node):
        ranks = by_node[node]
        if per_rank:
            for d in ranks:
                hops.append(Hop(node, d if relay is None else relay(topo, src, node), (d,), bitmap_of(topo, (d,))))
        else:
            hops.append(Hop(node, relay(topo, src, node), tuple(ranks), bitmap_of(topo, ranks)))
    return own, hops


def relayed_by(topo, rank: int, sources: Iterable[int], relay: Relay = spread) -> List[int]:
    """The ``sources`` on other nodes whose copies for ``rank``'s node ``rank`` relays."""
    node = topo.node_of[rank]
    return [s for s in sources if topo.node_of[s] != node and relay(topo, s, node) == rank]


def full_bitmap(n: int) -> int:
    """The bitmap of every local rank of a node of ``n`` ranks."""
    return (1 << n) - 1
