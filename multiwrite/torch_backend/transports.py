"""The multiwrite transport of a torch process group: its timeout, which transport it uses, the
start-up agreement of its ranks through the group's store, and the transport itself.

Inter-node messages of multiwrite's operators go over MPI when launched by MPI with matching ranks, else
over a Gloo process group built from the group's store (``MULTIWRITE_TRANSPORT=mpi|gloo`` overrides).
A subgroup gets a Gloo transport from its prefix store, or an MPI communicator from
``MPI_Comm_create_group`` over exactly its ranks.
"""
import datetime
import logging
import os
import zlib

from .. import _config
from ._torch import dist

log = logging.getLogger("multiwrite")


def timeout_seconds(timeout: "datetime.timedelta | None") -> float:
    """MULTIWRITE_TIMEOUT, else the ``timeout`` given to init_process_group, else the default."""
    if os.environ.get("MULTIWRITE_TIMEOUT"):
        return _config.timeout_s()
    if isinstance(timeout, datetime.timedelta) and timeout.total_seconds() > 0:
        return timeout.total_seconds()
    return _config.DEFAULT_TIMEOUT_S


def _torch_rank_size(rank, size, global_ranks):
    """This process's (rank, size) in torch's world (a group's own ones when it is not a subgroup)."""
    if global_ranks:
        return dist.get_rank(), dist.get_world_size()
    return rank, size


def _transport_kind(rank, size, global_ranks):
    """MULTIWRITE_TRANSPORT, else MPI when launched by MPI with matching ranks, else Gloo."""
    value = os.environ.get("MULTIWRITE_TRANSPORT", "").strip().lower()
    if value:
        if value not in _config.TRANSPORTS:
            raise ValueError(f"MULTIWRITE_TRANSPORT={value!r}: expected one of {_config.TRANSPORTS}")
        return value
    if not _config.launched_by_mpi():
        return "gloo"
    try:
        from mpi4py import MPI
    except ImportError:
        return "gloo"
    world_rank, world_size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    return "mpi" if (world_rank, world_size) == _torch_rank_size(rank, size, global_ranks) else "gloo"


def _agree_through_store(store, prefix, rank, size, kind, timeout_s):
    """Every rank of the group compares its transport and the settings that must agree (through the
    group's store, bounded by the timeout) before any transport-specific collective: a rank that
    differs or has a bad setting makes every rank raise, naming the setting, not a hang or a timeout."""
    from ..transport import rendezvous
    kind, _, state, error = _config.local_state(kind, timeout_s)
    rendezvous.store_allgather_agree(dist.PrefixStore(prefix, store), "agree", rank, size, state, timeout_s,
                                     error, "creating the multiwrite process group")


def _make_transport(store, rank, size, global_ranks, group_id, timeout_s, prefix, kind):
    if kind == "gloo":
        from ..transport.gloo import GlooTransport
        return GlooTransport(store, rank, size, timeout_s, prefix=prefix)
    from mpi4py import MPI

    from ..transport.mpi import MPITransport
    world = MPI.COMM_WORLD
    torch_rank, torch_size = _torch_rank_size(rank, size, global_ranks)
    if (world.Get_rank(), world.Get_size()) != (torch_rank, torch_size):
        raise RuntimeError(f"MULTIWRITE_TRANSPORT=mpi, but torch rank/world size ({torch_rank}/{torch_size}) "
                           f"differ from MPI's ({world.Get_rank()}/{world.Get_size()}); use "
                           f"MULTIWRITE_TRANSPORT=gloo")
    if not global_ranks or list(global_ranks) == list(range(world.Get_size())):
        return MPITransport(None, timeout_s)
    # Collective over the members only (torch creates the backend on members only).
    world_group = world.Get_group()
    members = world_group.Incl(list(global_ranks))
    tag = zlib.crc32(str(group_id).encode()) % 32768
    comm = world.Create_group(members, tag)
    members.Free()
    world_group.Free()
    try:
        return MPITransport(comm, timeout_s)
    finally:
        comm.Free()


def open_transport(store, prefix, rank, size, global_ranks, group_id, timeout_s):
    """The transport of one torch group: chosen, agreed on by every rank of the group (keys under
    ``prefix``/g<group_id>), then built (keys under ``prefix``/transport)."""
    global_ranks = list(global_ranks or [])
    try:
        kind = _transport_kind(rank, size, global_ranks)
    except ValueError:             # a bad setting is raised by _agree_through_store, once every rank saw it
        kind = "gloo"
    _agree_through_store(store, f"{prefix}/g{group_id}", rank, size, kind, timeout_s)
    log.debug("multiwrite: group %s (rank %d of %d): %s transport", group_id, rank, size, kind)
    return _make_transport(store, rank, size, global_ranks, group_id, timeout_s, prefix + "/transport", kind)
