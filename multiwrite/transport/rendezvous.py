"""Rendezvous: how the ranks of a job find each other and agree on their settings before a group exists.

* ``agree(...)``: before any transport-specific collective, every rank compares its start-up state:
  its transport choice, the settings that must be equal on every rank (``_config.AGREED``) and whether
  its settings are valid at all. Under an MPI launcher the states travel through a non-blocking MPI
  allgather on the world communicator (``check_launch``), under torchrun and in the torch backend
  through the c10d store (``store_allgather``). A rank that disagrees or has a bad setting makes every
  rank raise at once (naming the setting and the rank); a rank that never arrives makes every other
  rank raise a MultiwriteTimeout. Nothing waits longer than the timeout.
* ``mpi_store(...)``: a torch TCPStore for the Gloo transport and the torch backend under mpirun
  without MASTER_ADDR. Rank 0 opens it on the one address that the other ranks reach it by (loopback
  when every rank is on rank 0's node, else rank 0's address on the subnet it shares with the other
  ranks; ``MULTIWRITE_MASTER_ADDR`` chooses), on a port the kernel picks (or ``port``), and tells the
  others through MPI. Every key lives under a random per-job prefix that only the job's ranks learn
  (through MPI), so another process that connects to the port can neither read nor change the job's
  keys.
"""
import datetime
import os
import secrets
import socket

from .. import _config
from ..errors import MismatchError, MultiwriteError


def check_launch(state, timeout_s, local_error=None):
    """Under an MPI launcher: MPI initialized (bounded), then every rank's start-up ``state`` (see
    _config.local_state) compared across the world communicator (``agree``). Returns mpi4py's MPI."""
    from .mpi import allgather_pickled, init_mpi
    MPI = init_mpi(timeout_s)
    everyone = allgather_pickled(MPI, MPI.COMM_WORLD, state, timeout_s,
                                 "multiwrite initialization (comparing settings across ranks)")
    agree(everyone, MPI.COMM_WORLD.Get_rank(), "multiwrite initialization", local_error)
    return MPI


def store_allgather(store, prefix, rank, size, obj, timeout_s, what):
    """Every rank's picklable ``obj`` through a c10d store (keys ``prefix``/rank), bounded by the
    timeout: a rank that never writes its key is a MultiwriteTimeout, not a hang."""
    import pickle
    from ..errors import MultiwriteTimeout
    store.set(f"{prefix}/{rank}", pickle.dumps(obj))
    keys = [f"{prefix}/{r}" for r in range(size)]
    try:
        store.wait(keys, datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/DistStoreError on timeout
        missing = [r for r, k in enumerate(keys) if not store.check([k])]
        raise MultiwriteTimeout(f"{what}: rank(s) {_config._ranks(missing)} did not arrive within {timeout_s:g}s "
                                f"(late, died, or not calling it; MULTIWRITE_TIMEOUT sets the limit)") from exc
    return [pickle.loads(store.get(k)) for k in keys]


def store_allgather_agree(store, prefix, rank, size, state, timeout_s, local_error=None,
                          what="multiwrite initialization"):
    """``agree`` on every rank's start-up ``state`` exchanged through ``store``."""
    everyone = store_allgather(store, prefix, rank, size, state, timeout_s, f"{what} (comparing settings)")
    agree(everyone, rank, what, local_error)


def agree(everyone, rank, what, local_error=None):
    """Compare every rank's start-up state (kind, agreed settings, error text), the same list on every
    rank, so that every rank raises together: this rank's own settings error (``local_error``) as it
    is; another rank's as a MismatchError naming it; then different transports or AGREED settings."""
    errors = [(r, e) for r, (_, _, e) in enumerate(everyone) if e]
    if local_error is not None:
        raise local_error
    if errors:
        r, text = errors[0]
        raise MismatchError(f"{what}: rank {r} cannot start: {text}")
    kinds = {}
    for r, (k, _, _) in enumerate(everyone):
        kinds.setdefault(k, []).append(r)
    if len(kinds) > 1:
        parts = "; ".join(f"{k} on rank(s) {_config._ranks(rs)}" for k, rs in kinds.items())
        raise MismatchError(f"{what}: the ranks chose different transports ({parts}): set "
                            f"MULTIWRITE_TRANSPORT the same on every rank")
    problem = _config.disagreement([values for _, values, _ in everyone])
    if problem:
        raise MismatchError(f"{what}: {problem}")


def _ipv4_interfaces():
    """[(address, netmask)] of this host's (network namespace's) IPv4 interfaces, loopback excluded."""
    out = []
    try:
        import fcntl
        import struct
        for _, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                req = struct.pack("256s", name.encode()[:15])
                try:
                    addr = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x8915, req)[20:24])   # SIOCGIFADDR
                    mask = socket.inet_ntoa(fcntl.ioctl(s.fileno(), 0x891B, req)[20:24])   # SIOCGIFNETMASK
                except OSError:
                    continue
            if not addr.startswith("127."):
                out.append((addr, mask))
    except Exception:  # not Linux: fall back to name resolution
        pass
    return out


def _ip_int(a):
    return int.from_bytes(socket.inet_aton(a), "big")


def _shared(addr, interfaces):
    """True when ``addr`` is on the subnet of one of ``interfaces``."""
    return any(_ip_int(addr) & _ip_int(mask) == _ip_int(mine) & _ip_int(mask) for mine, mask in interfaces)


def choose_store_address(infos):
    """(address rank 0 listens on, address the others connect to) from every rank's
    (node key, IPv4 interfaces); ``MULTIWRITE_MASTER_ADDR`` wins. A job on one node uses loopback;
    otherwise rank 0's address on a subnet every other node shares, else the one most nodes share (the
    rest must route to it)."""
    forced = os.environ.get("MULTIWRITE_MASTER_ADDR", "").strip()
    if forced:
        return forced, forced
    key0, ifaces0 = infos[0]
    remote = [ifaces for key, ifaces in infos[1:] if key != key0]
    if not remote:
        return "127.0.0.1", "127.0.0.1"
    if not ifaces0:
        raise MultiwriteError("rendezvous: rank 0 has no IPv4 interface other than loopback, but ranks of other "
                              "nodes must reach it; set MULTIWRITE_MASTER_ADDR")
    best = max(ifaces0, key=lambda a: sum(_shared(a[0], ifaces) for ifaces in remote))
    return best[0], best[0]


def _listen(addr, port):
    """A listening TCP socket on (addr, port), with an error that says what to do."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, port))
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise MultiwriteError(f"rendezvous: rank 0 cannot listen on {addr}:{port} ({e.strerror}); set "
                              f"MULTIWRITE_MASTER_ADDR to an address of rank 0's host (and MASTER_PORT to a free "
                              f"port, or leave it unset for one the kernel picks)") from None
    return sock


def mpi_store(timeout_s, port=0):
    """(store, rank, size, address, port): a TCPStore on rank 0 found through MPI (see the module doc).
    ``port`` 0: one the kernel picks. Bounded by ``timeout_s`` at every step."""
    import torch.distributed as dist
    from ..topology import node_key
    from .mpi import allgather_pickled, init_mpi
    MPI = init_mpi(timeout_s)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    timeout = datetime.timedelta(seconds=timeout_s)
    what = "rendezvous through MPI"
    infos = allgather_pickled(MPI, comm, (node_key(), _ipv4_interfaces()), timeout_s, what)
    store, offer = None, None
    if rank == 0:
        listen_addr, addr = choose_store_address(infos)
        sock = _listen(listen_addr, port)
        bound_port = sock.getsockname()[1]
        # TCPStore serves on our socket, bound to one address, not to every interface; it owns the
        # descriptor from now on (detach: Python must never close it under the store)
        store = dist.TCPStore(addr, bound_port, size, True, timeout, wait_for_workers=False,
                              master_listen_fd=sock.detach(), use_libuv=True)
        offer = (addr, store.port, secrets.token_hex(16))
    offer = allgather_pickled(MPI, comm, offer, timeout_s, what)[0]
    addr, port, secret = offer
    if rank != 0:
        try:
            store = dist.TCPStore(addr, port, size, False, timeout)
        except Exception as e:  # noqa: BLE001 - torch raises several kinds; say what to check
            raise MultiwriteError(f"{what}: rank {rank} cannot connect to rank 0's store at {addr}:{port} ({e}); "
                                  f"check that this address is reachable from every node (firewall, "
                                  f"MULTIWRITE_MASTER_ADDR)") from e
    return dist.PrefixStore(f"multiwrite-job-{secret}", store), rank, size, addr, port
