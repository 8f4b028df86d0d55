"""Launch under mpirun: the MPI launcher's environment becomes torch.distributed's, and ``env://``
rendezvouses through MPI.

* torchrun (or ``MASTER_ADDR`` set): torch's own ``env://`` is used unchanged.
* mpirun (``OMPI_COMM_WORLD_SIZE``/``PMI_SIZE``/... set and ``MASTER_ADDR`` unset): importing
  multiwrite sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` from the MPI
  environment (``set_env_from_mpi_launcher``); the first ``init_process_group`` (``env://``) then
  rendezvouses through MPI (``install_rendezvous_hook``; the rendezvous itself is
  ``multiwrite/transport/rendezvous.py``): rank 0 starts a TCPStore on a port the kernel picks (port 0,
  so no race for a "free" port) on the one address the other ranks reach it by (loopback when every
  rank is on its node, else its address on the subnet the other nodes share;
  ``MULTIWRITE_MASTER_ADDR`` overrides), and tells the others through MPI; every key lives under a
  per-job secret prefix. ``MASTER_ADDR``/``MASTER_PORT`` are set afterwards for other libraries. The
  multiwrite transport is MPI (``MULTIWRITE_TRANSPORT`` overrides: ``gloo`` works too).

How it is attached to torch (torch 2.13):

* ``mpi://`` is a rendezvous scheme of its own, registered through torch's public
  ``torch.distributed.rendezvous.register_rendezvous_handler``: ``init_process_group("multiwrite",
  init_method="mpi://")`` (or ``"gloo"``) rendezvouses through MPI whatever the environment says.
* ``env://`` (the default init_method) under mpirun without ``MASTER_ADDR``: torch has no public way to
  extend or replace a scheme that exists (``register_rendezvous_handler`` refuses a registered scheme),
  so this one case wraps the handler in torch's private ``_rendezvous_handlers["env"]``. It is done
  only when the process was launched by MPI and ``MASTER_ADDR`` is unset at import -- exactly the case
  where torch's own ``env://`` would fail with "MASTER_ADDR expected" -- and the wrapper calls torch's
  handler unchanged whenever ``MASTER_ADDR`` is set when ``init_process_group`` runs (unless this
  process did the MPI rendezvous before: re-initialisation stays on MPI). Under torchrun, with
  ``MASTER_ADDR`` set, or outside MPI, nothing of torch's is touched.
"""
import datetime
import logging
import os

from .. import _config
from .transports import timeout_seconds

log = logging.getLogger("multiwrite")

#: The rendezvous scheme registered through torch's public API (``init_method="mpi://"``).
MPI_SCHEME = "mpi"

_MPI_ENV_KEYS = (  # (rank, size, local rank, local size) per MPI launcher
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),       # MPICH / Intel MPI (Hydra)
    ("PMIX_RANK", "SLURM_NTASKS", "SLURM_LOCALID", None),   # srun --mpi=pmix (local size from MPI)
)


def _mpi_rendezvous_wanted() -> bool:
    """Launched by MPI without torchrun's rendezvous variables (or we did the MPI rendezvous before)."""
    return _config.launched_by_mpi() and ("MASTER_ADDR" not in os.environ or _mpi_state["done"])


def _mpi_env_values():
    for keys in _MPI_ENV_KEYS:
        values = [os.environ.get(k) if k else None for k in keys]
        if values[0] is not None and values[1] is not None:
            return values
    return None


def set_env_from_mpi_launcher() -> None:
    """At import: RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE from the MPI launcher (never overrides)."""
    if not _config.launched_by_mpi() or "MASTER_ADDR" in os.environ:
        return
    values = _mpi_env_values()
    if values is None:
        return          # filled in from mpi4py at the first init_process_group
    for name, value in zip(("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"), values):
        if value is not None:
            os.environ.setdefault(name, value)


_mpi_state = {"done": False}


def _mpi_rendezvous(url, timeout):
    """env:// under mpirun without MASTER_ADDR: a TCPStore on rank 0, found through MPI
    (transport/rendezvous.py: bound to the address the job uses, keys under a per-job secret prefix)."""
    from urllib.parse import parse_qs, urlparse
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("multiwrite: launched by MPI without MASTER_ADDR, so the rendezvous goes "
                           "through MPI, but mpi4py is not installed (pip install mpi4py), or set "
                           "MASTER_ADDR/MASTER_PORT") from exc
    from ..transport import rendezvous
    from ..transport.mpi import init_mpi
    timeout_s = timeout_seconds(timeout)
    MPI = init_mpi(timeout_s)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    query = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
    for name, mine in (("rank", rank), ("world_size", size)):
        if name in query and int(query[name]) != mine:
            raise ValueError(f"multiwrite: init_process_group({name}={query[name]}) but MPI says "
                             f"{name}={mine}; under mpirun leave rank/world_size to MPI")
    port = _config._int_setting("MASTER_PORT", 0, 0) if not _mpi_state["done"] else 0
    store, rank, size, addr, port = rendezvous.mpi_store(timeout_s, port)
    for k, v in (("RANK", rank), ("WORLD_SIZE", size)):
        if k in os.environ and os.environ[k] != str(v):
            raise RuntimeError(f"multiwrite: {k}={os.environ[k]} in the environment, but MPI says {v}")
        os.environ[k] = str(v)
    if "LOCAL_RANK" not in os.environ or "LOCAL_WORLD_SIZE" not in os.environ:
        # The launcher did not say (set at import from OMPI_COMM_WORLD_LOCAL_RANK etc. otherwise).
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        os.environ.setdefault("LOCAL_RANK", str(local.Get_rank()))
        os.environ.setdefault("LOCAL_WORLD_SIZE", str(local.Get_size()))
        local.Free()
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    os.environ.setdefault("MULTIWRITE_TRANSPORT", "mpi")
    _mpi_state["done"] = True
    log.debug("multiwrite: MPI rendezvous done: rank %d of %d, store on %s:%d", rank, size, addr, port)
    yield store, rank, size
    raise RuntimeError("multiwrite: re-rendezvous through MPI is not supported")


def mpi_rendezvous_handler(url, timeout=datetime.timedelta(minutes=30), **kwargs):
    """Handler of the ``mpi://`` scheme: the MPI rendezvous, whatever MASTER_ADDR says."""
    return _mpi_rendezvous(url, timeout)


def register_mpi_scheme() -> None:
    """``mpi://`` through torch's public register_rendezvous_handler (idempotent)."""
    from torch.distributed.rendezvous import register_rendezvous_handler
    try:
        register_rendezvous_handler(MPI_SCHEME, mpi_rendezvous_handler)
    except RuntimeError as exc:          # registered before: by an earlier import, or by someone else
        log.debug("multiwrite: %s:// not registered again: %s", MPI_SCHEME, exc)


def env_hook_wanted() -> bool:
    """The private env:// wrapper is installed only when torch's own env:// cannot work: launched by
    MPI and no MASTER_ADDR (module doc)."""
    return _config.launched_by_mpi() and "MASTER_ADDR" not in os.environ


def install_rendezvous_hook() -> bool:
    """Under mpirun without MASTER_ADDR: route env:// through MPI (module doc). Returns whether the
    wrapper is in place."""
    if not env_hook_wanted():
        return False
    import importlib
    _rdzv = importlib.import_module("torch.distributed.rendezvous")   # dist.rendezvous is the function
    handlers = getattr(_rdzv, "_rendezvous_handlers", None)           # private: no public way (module doc)
    if not isinstance(handlers, dict) or "env" not in handlers:
        log.warning("multiwrite: cannot route torch's env:// rendezvous through MPI in this torch version; "
                    "under mpirun pass init_method='mpi://' or set MASTER_ADDR/MASTER_PORT")
        return False
    if getattr(handlers["env"], "_multiwrite", False):
        return True
    torch_env = handlers["env"]

    def env_or_mpi(url, timeout=datetime.timedelta(minutes=30), **kwargs):
        if _mpi_rendezvous_wanted():
            log.debug("multiwrite: env:// under mpirun without MASTER_ADDR: rendezvous through MPI")
            return _mpi_rendezvous(url, timeout)
        return torch_env(url, timeout=timeout, **kwargs)

    env_or_mpi._multiwrite = True
    env_or_mpi.__wrapped__ = torch_env
    handlers["env"] = env_or_mpi
    log.debug("multiwrite: env:// routed through MPI when MASTER_ADDR is unset (launched by MPI)")
    return True
