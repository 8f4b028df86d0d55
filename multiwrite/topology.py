"""Which rank lives on which node, and which node in which rack.

A node is where ranks share memory: by default hostname + network namespace (virtual nodes on one
host have distinct namespaces). ``MULTIWRITE_RANKS_PER_NODE=L`` groups consecutive ranks instead, for
emulating nodes on one host. Nodes are numbered by their lowest rank; node sizes may differ.

A rack is a set of nodes under one top-of-rack switch: each rank's ``MULTIWRITE_RACK``, else its host's
entry in the ``MULTIWRITE_TOPOLOGY`` file (_config.rack_state); neither set = one rack. Every rank of a
node must report the same rack. Racks are numbered by first appearance in node order.
"""
import functools
import os
import socket
from dataclasses import dataclass
from typing import Optional, Tuple

from . import _config
from .errors import MismatchError


def node_key() -> str:
    """This process's node identity: hostname plus network-namespace inode."""
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    return f"{socket.gethostname()}/netns:{netns}"


@dataclass(frozen=True)
class Topology:
    """Placement of the ranks of one group.

    rank, world_size: this rank and the group size; node, num_nodes: this rank's node and the node
    count; local_rank, local_size: position and count of ranks on this node. ``node_of[r]``,
    ``local_rank_of[r]`` and ``node_ranks[n]`` describe every rank.

    Racks: ``rack_of_node[n]`` is node n's rack (0..num_racks-1), ``rack_names[k]`` rack k's name
    (``""`` when no rack is configured: then every node is in rack 0, the default). ``rack`` is this
    rank's rack, ``rack_of[r]`` rank r's, ``nodes_of_rack[k]`` the nodes of rack k.
    """

    rank: int
    world_size: int
    node_of: Tuple[int, ...]
    local_rank_of: Tuple[int, ...]
    node_ranks: Tuple[Tuple[int, ...], ...]
    rack_of_node: Optional[Tuple[int, ...]] = None
    rack_names: Tuple[str, ...] = ("",)

    def __post_init__(self):
        if self.rack_of_node is None:
            object.__setattr__(self, "rack_of_node", (0,) * len(self.node_ranks))
        if len(self.rack_of_node) != len(self.node_ranks):
            raise ValueError(f"rack_of_node has {len(self.rack_of_node)} entries for {len(self.node_ranks)} nodes")
        if sorted(set(self.rack_of_node)) != list(range(len(self.rack_names))):
            raise ValueError(f"rack_of_node {self.rack_of_node} does not use each of the "
                             f"{len(self.rack_names)} rack(s) {self.rack_names}")

    @property
    def node(self) -> int:
        return self.node_of[self.rank]

    @property
    def num_nodes(self) -> int:
        return len(self.node_ranks)

    @property
    def local_rank(self) -> int:
        return self.local_rank_of[self.rank]

    @property
    def local_size(self) -> int:
        return len(self.node_ranks[self.node])

    @property
    def local_ranks(self) -> Tuple[int, ...]:
        return self.node_ranks[self.node]

    @property
    def leader(self) -> int:
        """Lowest rank of this node: it creates the node's shared memory."""
        return self.node_ranks[self.node][0]

    def same_node(self, other_rank: int) -> bool:
        return self.node_of[other_rank] == self.node

    @property
    def num_racks(self) -> int:
        return len(self.rack_names)

    @property
    def rack(self) -> int:
        """This rank's rack."""
        return self.rack_of_node[self.node]

    @functools.cached_property
    def rack_of(self) -> Tuple[int, ...]:
        """Rank -> rack."""
        return tuple(self.rack_of_node[n] for n in self.node_of)

    @functools.cached_property
    def nodes_of_rack(self) -> Tuple[Tuple[int, ...], ...]:
        """Rack -> its nodes, in node order."""
        return tuple(tuple(n for n, k in enumerate(self.rack_of_node) if k == rack)
                     for rack in range(self.num_racks))

    def same_rack(self, other_rank: int) -> bool:
        return self.rack_of_node[self.node_of[other_rank]] == self.rack

    @classmethod
    def from_keys(cls, rank: int, keys, racks=None) -> "Topology":
        """Number nodes by first appearance in rank order; ``keys[r]`` is rank r's node identity.

        ``racks[r]``: rank r's rack name, or None when it has none (_config.rack_state); None or all
        None = one rack. Racks are numbered by first appearance in node order. MismatchError when the
        ranks of one node name different racks, or when some nodes name a rack and others none."""
        ids, node_of, node_ranks = {}, [], []
        for r, key in enumerate(keys):
            if key not in ids:
                ids[key] = len(ids)
                node_ranks.append([])
            node_of.append(ids[key])
            node_ranks[ids[key]].append(r)
        local_rank_of = [0] * len(keys)
        for ranks in node_ranks:
            for i, r in enumerate(ranks):
                local_rank_of[r] = i
        rack_of_node, rack_names = None, ("",)
        if racks is not None and any(name is not None for name in racks):
            rack_of_node, rack_names = _number_racks(list(keys), node_ranks, list(racks))
        return cls(rank, len(keys), tuple(node_of), tuple(local_rank_of),
                   tuple(tuple(r) for r in node_ranks), rack_of_node, rack_names)

    def as_dict(self):
        return dict(rank=self.rank, world_size=self.world_size, node=self.node, num_nodes=self.num_nodes,
                    local_rank=self.local_rank, local_size=self.local_size, rack=self.rack,
                    num_racks=self.num_racks, rack_names=list(self.rack_names),
                    rack_of_node=list(self.rack_of_node))

    def __repr__(self):
        sizes = "+".join(str(len(r)) for r in self.node_ranks)
        racks = ""
        if self.num_racks > 1 or self.rack_names[0]:
            racks = " (" + "; ".join(f"{name!r}: node{'s' if len(nodes) > 1 else ''} {', '.join(map(str, nodes))}"
                                     for name, nodes in zip(self.rack_names, self.nodes_of_rack)) + ")"
        return (f"Topology(rank={self.rank}, world_size={self.world_size}, node={self.node}, "
                f"num_nodes={self.num_nodes} ({sizes} ranks), local_rank={self.local_rank}, "
                f"local_size={self.local_size}, rack={self.rack}, num_racks={self.num_racks}{racks})")


def _number_racks(keys, node_ranks, racks):
    """(rack_of_node, rack_names) from every rank's rack name; MismatchError (the same on every rank:
    it depends only on the arguments) when a node's ranks disagree or some nodes have no rack."""
    def who(n):
        key = keys[node_ranks[n][0]]
        return f"node {n} ({key}, rank(s) {_config._ranks(node_ranks[n])})" if isinstance(key, str) \
            else f"node {n} (rank(s) {_config._ranks(node_ranks[n])})"

    node_rack = []
    for n, ranks in enumerate(node_ranks):
        seen = {}
        for r in ranks:
            seen.setdefault(racks[r], []).append(r)
        if len(seen) > 1:
            parts = "; ".join(f"{'unset' if name is None else repr(name)} on rank(s) {_config._ranks(rs)}"
                              for name, rs in seen.items())
            raise MismatchError(f"the ranks of {who(n)} report different racks ({parts}): MULTIWRITE_RACK, or "
                                f"the host's line in the MULTIWRITE_TOPOLOGY file, must give every rank of a "
                                f"node the same rack")
        node_rack.append(racks[ranks[0]])
    missing = [n for n, name in enumerate(node_rack) if name is None]
    if missing:
        named = [n for n, name in enumerate(node_rack) if name is not None]
        raise MismatchError(f"node(s) {_config._ranks(named)} have a rack but node(s) {_config._ranks(missing)} "
                            f"have none (first: {who(missing[0])}): set MULTIWRITE_RACK or MULTIWRITE_TOPOLOGY "
                            f"for every node, or for none")
    ids = {}
    for name in node_rack:
        ids.setdefault(name, len(ids))
    return tuple(ids[name] for name in node_rack), tuple(ids)


def detect(transport, global_ranks=None) -> Topology:
    """Collective: every rank of ``transport`` learns the placement of every rank (node and rack), and
    every rank checks that the settings that must agree (``_config.AGREED``) do, that the ranks that read
    a MULTIWRITE_TOPOLOGY file read the same map, and that the ranks of each node report the same rack
    (MismatchError on every rank otherwise: every check runs on the same gathered list).

    ``global_ranks[r]``: the world rank of group rank r (subgroups); emulated nodes
    (MULTIWRITE_RANKS_PER_NODE) follow world ranks, so a subgroup sees the same nodes as the world."""
    per_node = _config.ranks_per_node()
    everyone = transport.allgather_obj((node_key(), _config.agreed(), _config.rack_state()))
    problem = (_config.disagreement([agreed for _, agreed, _ in everyone])
               or _config.topology_file_disagreement([rack for _, _, rack in everyone]))
    if problem:
        raise MismatchError(f"creating a multiwrite group: {problem}")
    keys = [key for key, _, _ in everyone]
    if per_node is not None:
        world = list(global_ranks) if global_ranks else list(range(transport.size))
        # Emulated nodes must still be real shared-memory domains: refuse to group ranks across hosts.
        emulated = [world[r] // per_node for r in range(transport.size)]
        for r, key in enumerate(keys):
            first = emulated.index(emulated[r])
            if keys[first] != key:
                raise RuntimeError(
                    f"MULTIWRITE_RANKS_PER_NODE={per_node} puts rank {world[r]} ({key}) and rank "
                    f"{world[first]} ({keys[first]}) on one node, but they do not share memory")
        keys = emulated
    try:
        return Topology.from_keys(transport.rank, keys, [rack[0] for _, _, rack in everyone])
    except MismatchError as exc:
        raise MismatchError(f"creating a multiwrite group: {exc}") from None
