"""Which rank lives on which node.

A node is where ranks share memory: by default hostname + network namespace (virtual nodes on one
host have distinct namespaces). ``MULTIWRITE_RANKS_PER_NODE=L`` groups consecutive ranks instead, for
emulating nodes on one host. Nodes are numbered by their lowest rank; node sizes may differ.
"""
import os
import socket
from dataclasses import dataclass
from typing import Tuple

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
    """

    rank: int
    world_size: int
    node_of: Tuple[int, ...]
    local_rank_of: Tuple[int, ...]
    node_ranks: Tuple[Tuple[int, ...], ...]

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

    @classmethod
    def from_keys(cls, rank: int, keys) -> "Topology":
        """Number nodes by first appearance in rank order; ``keys[r]`` is rank r's node identity."""
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
        return cls(rank, len(keys), tuple(node_of), tuple(local_rank_of),
                   tuple(tuple(r) for r in node_ranks))

    def as_dict(self):
        return dict(rank=self.rank, world_size=self.world_size, node=self.node, num_nodes=self.num_nodes,
                    local_rank=self.local_rank, local_size=self.local_size)

    def __repr__(self):
        sizes = "+".join(str(len(r)) for r in self.node_ranks)
        return (f"Topology(rank={self.rank}, world_size={self.world_size}, node={self.node}, "
                f"num_nodes={self.num_nodes} ({sizes} ranks), local_rank={self.local_rank}, "
                f"local_size={self.local_size})")


def detect(transport, global_ranks=None) -> Topology:
    """Collective: every rank of ``transport`` learns the placement of every rank, and every rank checks
    that the settings that must agree (``_config.AGREED``) do (MismatchError on every rank otherwise).

    ``global_ranks[r]``: the world rank of group rank r (subgroups); emulated nodes
    (MULTIWRITE_RANKS_PER_NODE) follow world ranks, so a subgroup sees the same nodes as the world."""
    per_node = _config.ranks_per_node()
    everyone = transport.allgather_obj((node_key(), _config.agreed()))
    problem = _config.disagreement([agreed for _, agreed in everyone])
    if problem:
        raise MismatchError(f"creating a multiwrite group: {problem}")
    keys = [key for key, _ in everyone]
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
    return Topology.from_keys(transport.rank, keys)
