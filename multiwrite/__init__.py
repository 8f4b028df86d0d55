"""multiwrite: MultiWrite collectives for PyTorch and MPI.

A MultiWrite delivers one payload to a set of ranks while crossing each node's network link once per
receiving node; relays replicate it through shared memory on the far side. See README.md and
docs/design.md for semantics; the public API:

    mw.init() / mw.finalize()          default group from mpirun (MPI) or torchrun (Gloo)
    mw.topology()                      rank, world_size, node, num_nodes, local_rank, local_size, rack, num_racks
    mw.all_gather(out, x)              AllGather on MultiWrite (or unicast with mode="unicast")
    mw.Window(nbytes)                  one-sided windows: win.multi_write(src, ranks, offset), win.fence()
    mw.Buffer()                        MoE dispatch / combine (DeepEP-style); mw.moe: autograd versions
    mw.stats() / mw.reset_stats()      bytes and messages per link class
"""
__version__ = "0.1.0"

from .errors import MismatchError, MultiwriteError, MultiwriteTimeout, WindowError
from .runtime.group import Group, default_group, finalize, init
from .ops.allgather import all_gather
from .ops.broadcast import broadcast
from .ops.reduce import all_reduce, reduce, reduce_scatter
from . import backend as _backend  # registers the "multiwrite" torch.distributed backend
from .ops.window import Window
from .ops.moe.buffer import Buffer
from . import moe

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .topology import Topology


def topology(group: "Group | None" = None) -> "Topology":
    """Placement of this rank: a Topology with rank, world_size, node, num_nodes, local_rank,
    local_size, rack, num_racks, rack_names (and node_of / local_rank_of / node_ranks / rack_of for
    every rank, rack_of_node / nodes_of_rack for every node)."""
    from .runtime.group import resolve
    return resolve(group).topo


def stats(group: "Group | None" = None) -> dict:
    """This rank's traffic since the last reset: ``{"inter_node": {"bytes", "messages",
    "per_peer_node": {node: bytes}}, "intra_rack": {"bytes", "messages"}, "inter_rack": {...},
    "intra_node": {"bytes", "messages"}, "control": {...}}``. ``intra_rack`` and ``inter_rack`` split
    the inter-node messages by whether their destination node is in this rank's rack; they add up to
    ``inter_node``."""
    from .runtime.group import resolve
    return resolve(group).stats.as_dict()


def reset_stats(group: "Group | None" = None) -> None:
    from .runtime.group import resolve
    resolve(group).stats.reset()


__all__ = ["init", "finalize", "topology", "stats", "reset_stats", "all_gather", "Window", "Buffer", "moe", "Group",
           "default_group", "MultiwriteError", "MultiwriteTimeout", "MismatchError", "WindowError"]
__all__ += ["all_reduce", "reduce", "reduce_scatter"]
