"""Transports: the inter-node message layer behind one interface (see base.Transport)."""
import os

from .base import CompletedRequest, Request, Transport, wait_all, wait_polling


def create(kind: str, timeout_s: float) -> Transport:
    """Create the world transport for ``kind`` ('mpi' or 'gloo') from the launcher's environment."""
    if kind == "mpi":
        # A singleton (no mpirun): Open MPI 5 leaves the 16 MiB backing file of its shared-memory BTL
        # in /dev/shm after every such run (sm_segment.<host>.<uid>.<job>.0), and one process has no
        # peer to share memory with. Set only for MPI's initialization (in MPITransport), so that
        # processes this program starts later do not inherit it; no effect if MPI was initialized.
        no_sm = not _mpi_env() and "OMPI_MCA_btl" not in os.environ
        if no_sm:
            os.environ["OMPI_MCA_btl"] = "^sm"
        try:
            from .mpi import MPITransport
            t = MPITransport(None, timeout_s)
        finally:
            if no_sm:
                os.environ.pop("OMPI_MCA_btl", None)
        expected = int(os.environ.get("WORLD_SIZE", t.size))
        if t.size != expected:
            t.close()
            raise RuntimeError(f"the MPI transport sees {t.size} rank(s) but WORLD_SIZE={expected}: launch with "
                               "mpirun, or use MULTIWRITE_TRANSPORT=gloo under torchrun")
        return t
    if kind == "gloo":
        import datetime
        import torch.distributed as dist
        from .gloo import GlooTransport
        if "MASTER_ADDR" not in os.environ and _mpi_env():
            store, rank, size = _store_from_mpi(timeout_s)
        else:
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k not in os.environ]
            if missing:
                raise RuntimeError(
                    f"gloo transport needs torchrun's environment (missing {', '.join(missing)}); "
                    "launch with torchrun, or use MULTIWRITE_TRANSPORT=mpi under mpirun")
            store, rank, size = next(dist.rendezvous("env://", timeout=datetime.timedelta(seconds=timeout_s)))
        return GlooTransport(store, rank, size, timeout_s)
    raise ValueError(f"unknown transport {kind!r}: expected 'mpi' or 'gloo'")


def _mpi_env():
    from .._config import launched_by_mpi
    return launched_by_mpi()


def _store_from_mpi(timeout_s):
    """Gloo under mpirun: rank 0 hosts a TCPStore and MPI tells everyone where it is."""
    import datetime
    import socket
    from mpi4py import MPI
    import torch.distributed as dist
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    store = None
    if rank == 0:
        store = dist.TCPStore("0.0.0.0", 0, size, True, datetime.timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        addr = (socket.gethostbyname(socket.gethostname()), store.port)
    else:
        addr = None
    addr = comm.bcast(addr, root=0)
    if rank != 0:
        store = dist.TCPStore(addr[0], addr[1], size, False, datetime.timedelta(seconds=timeout_s))
    return store, rank, size


__all__ = ["Transport", "Request", "CompletedRequest", "wait_all", "wait_polling", "create"]
