"""The ``"multiwrite"`` torch.distributed backend.

Importing multiwrite registers it; a training script changes one line::

    import multiwrite                              # registers the backend
    dist.init_process_group("multiwrite")         # under torchrun (env://) or mpirun (MPI environment)

What runs where (see docs/backend.md for the table):

* on MultiWrite (multiwrite's operators on the group's transport and node shared memory): the
  all-gathers and ``broadcast``; on the multiwrite runtime without replication: ``all_to_all_single``
  and ``all_to_all`` -- native.py;
* delegated to an internal ``ProcessGroupGloo`` built from the same store (same ranks, its own key
  prefix): the reductions, ``gather``, ``scatter``, ``barrier``, ``send`` / ``recv`` -- delegated.py.

Every op takes CPU tensors, contiguous or not (non-contiguous tensors go through a contiguous copy that
is written back when the op completes), sync or ``async_op=True``. Ops on MultiWrite complete before
they return (their Work is already done); delegated ops return a Work that completes in Gloo's
threads, so they overlap with computation (work.py). Unsupported combinations (bitwise ops on floating
point, AVG on integers, PREMUL_SUM, non-CPU tensors, mismatched dtypes) raise TypeError/ValueError
naming the op and the dtype, before anything is sent (checks.py).

Launch and rendezvous: torchrun uses the usual ``env://`` and the multiwrite transport is Gloo over the
group's store; under mpirun importing multiwrite fills in torch's environment from MPI's and ``env://``
rendezvouses through MPI (``init_method="mpi://"`` does so explicitly), and the transport is MPI
(mpi_env.py, transports.py). The backend must be imported before ``init_process_group("multiwrite")``:
torch loads third-party distributed backends only from their import (``import multiwrite``).

Diagnostics go to ``logging.getLogger("multiwrite")`` (debug: groups created, transport, rendezvous).

Subgroups (``dist.new_group(ranks)``) get a multiwrite Group over exactly those ranks: a Gloo
transport from the subgroup's prefix store, or an MPI communicator from ``MPI_Comm_create_group``.
``group_of(pg)`` returns the multiwrite Group of such a process group, and the world group's Group
becomes multiwrite's default group (``mw.Buffer()``, ``mw.all_gather`` work right after init).

Modules: mpi_env (MPI launcher -> torch environment, the env:// hook), transports (a group's
transport, timeout and start-up agreement), work (Work objects), checks (argument checks), native and
delegated (the ops), process_group (the ProcessGroup, the backend creator, teardown at exit).
"""
import atexit
import logging
from typing import TYPE_CHECKING

from ._torch import BACKEND_NAME, dist
from .mpi_env import MPI_SCHEME, install_rendezvous_hook, register_mpi_scheme, set_env_from_mpi_launcher

if dist is not None:
    from .process_group import ProcessGroupMultiwrite, create, shutdown_all

log = logging.getLogger("multiwrite")

if TYPE_CHECKING:
    from ..runtime.group import Group


def group_of(pg: "dist.ProcessGroup | None" = None) -> "Group":
    """The multiwrite Group behind a torch ProcessGroup of the "multiwrite" backend (None: the world
    group). Use it with multiwrite's own API: ``mw.Buffer(group=pg)``, ``mw.all_gather(out, x,
    group=group_of(pg))``."""
    if pg is None or (dist is not None and pg is dist.group.WORLD):
        if dist is None or not dist.is_initialized():
            raise RuntimeError("group_of(): torch.distributed is not initialized "
                               "(call dist.init_process_group('multiwrite') first)")
        pg = dist.group.WORLD
    if dist is not None and pg is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError("group_of(): this rank is not a member of that process group")
    g = getattr(pg, "mw_group", None)
    if g is None:
        backend = dist.get_backend(pg) if dist is not None and dist.is_initialized() else type(pg).__name__
        raise TypeError(f"group_of(): the process group uses the {backend!r} backend, not 'multiwrite'")
    g._check_open()
    return g


def register() -> None:
    """Register the "multiwrite" backend (done on import; idempotent), through torch's public APIs:
    ``dist.Backend.register_backend("multiwrite", ..., extended_api=True, devices=["cpu"])`` and the
    ``mpi://`` rendezvous scheme (``register_rendezvous_handler``). Under mpirun without MASTER_ADDR
    also routes ``env://`` through MPI, the one thing torch offers no public hook for (mpi_env.py)."""
    if dist is None:
        return
    if BACKEND_NAME not in dist.Backend.backend_list:
        dist.Backend.register_backend(BACKEND_NAME, create, extended_api=True, devices=["cpu"])
        log.debug("multiwrite: torch.distributed backend %r registered (devices: cpu)", BACKEND_NAME)
    register_mpi_scheme()
    install_rendezvous_hook()


set_env_from_mpi_launcher()
register()
if dist is not None:
    atexit.register(shutdown_all)

__all__ = ["BACKEND_NAME", "MPI_SCHEME", "ProcessGroupMultiwrite", "group_of", "register"]
