"""Transports: the inter-node message layer behind one interface (see base.Transport)."""
import os

from .. import _config
from . import rendezvous
from .base import CompletedRequest, Request, Transport, configure_polling, wait_all, wait_polling


_inits = {"count": 0}    # create() calls in this process: keys of each start-up are its own


def create(kind: str, timeout_s: float, state=None, local_error=None) -> Transport:
    """Create the world transport for ``kind`` ('mpi' or 'gloo') from the launcher's environment.

    Under a launcher every rank first compares, bounded by ``timeout_s``, its start-up ``state``
    (_config.local_state: transport, agreed settings, settings error) with every other rank's, through
    MPI (mpirun) or the torchrun store (rendezvous.agree): a rank that disagrees, has a bad setting
    (``local_error``, raised after the exchange) or never arrives makes every rank raise instead of
    waiting forever in a collective."""
    if kind not in ("mpi", "gloo"):
        raise ValueError(f"unknown transport {kind!r}: expected 'mpi' or 'gloo'")
    if state is None:
        state = (kind, _config.agreed(), None)
    if local_error is None:
        configure_polling(*_config.validate_all())     # the waits of start-up poll as the settings say
    _inits["count"] += 1
    mpi_launched = _config.launched_by_mpi()
    if mpi_launched or kind == "mpi":
        # A singleton (no mpirun): Open MPI 5 leaves the 16 MiB backing file of its shared-memory BTL
        # in /dev/shm after every such run (sm_segment.<host>.<uid>.<job>.0), and one process has no
        # peer to share memory with. Set only for MPI's initialization, so that processes this program
        # starts later do not inherit it; no effect if MPI was initialized.
        no_sm = not mpi_launched and "OMPI_MCA_btl" not in os.environ
        if no_sm:
            os.environ["OMPI_MCA_btl"] = "^sm"
        try:
            from . import mpi
            mpi.init_mpi(timeout_s)
        finally:
            if no_sm:
                os.environ.pop("OMPI_MCA_btl", None)
    store = None
    if mpi_launched:
        rendezvous.check_launch(state, timeout_s, local_error)
    elif _config.launched_by_torchrun():
        store, rank, size = _env_store(timeout_s)
        rendezvous.store_allgather_agree(store, f"multiwrite/init{_inits['count']}", rank, size, state, timeout_s,
                                         local_error)
    elif local_error is not None:
        raise local_error
    if kind == "mpi":
        t = mpi.MPITransport(None, timeout_s)
        expected = int(os.environ.get("WORLD_SIZE", t.size))
        if t.size != expected:
            t.close()
            raise RuntimeError(f"the MPI transport sees {t.size} rank(s) but WORLD_SIZE={expected}: launch with "
                               "mpirun, or use MULTIWRITE_TRANSPORT=gloo under torchrun")
        return t
    from .gloo import GlooTransport
    if store is None:
        if "MASTER_ADDR" not in os.environ and mpi_launched:
            store, rank, size, _, _ = rendezvous.mpi_store(timeout_s)
        else:
            store, rank, size = _env_store(timeout_s)
    return GlooTransport(store, rank, size, timeout_s)


def _env_store(timeout_s):
    """torchrun's store (env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE), bounded by the timeout."""
    import datetime
    import torch.distributed as dist
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
    if missing:
        raise RuntimeError(f"gloo transport needs torchrun's environment (missing {', '.join(missing)}); "
                           "launch with torchrun, or use MULTIWRITE_TRANSPORT=mpi under mpirun")
    return next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=timeout_s)))


__all__ = ["Transport", "Request", "CompletedRequest", "wait_all", "wait_polling", "create"]
