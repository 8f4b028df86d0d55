"""SPMD set-up of a benchmark rank: the launcher's world, MPI's and Gloo's own communicators,
multiwrite's default group, the barrier between iterations, and the node's wire byte counter."""
import datetime
import os
import socket

import torch

from .._util import poll


class Context:
    """Everything a benchmark rank needs. ``comm``: mpi4py COMM_WORLD (None under torchrun);
    ``gloo``: a torch.distributed Gloo group over all ranks; ``g``/``topo``: multiwrite's default group."""

    def __init__(self, barrier="auto"):
        from .._config import launched_by_mpi, launched_by_torchrun, timeout_s
        import multiwrite as mw
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        self.timeout_s = timeout_s()
        self.launcher = "torchrun" if launched_by_torchrun() else ("mpirun" if launched_by_mpi() else "single")
        self.comm = None
        if self.launcher != "torchrun":
            from mpi4py import MPI
            self.MPI = MPI
            self.comm = MPI.COMM_WORLD
        # The barrier between iterations: MPI_Barrier when Open MPI sleeps while it waits
        # (mpi_yield_when_idle; ranks leave it closest together), else a polled MPI_Ibarrier, so that
        # ranks that finished early never spin on the CPU that the still running ranks need.
        yields = os.environ.get("OMPI_MCA_mpi_yield_when_idle", "").lower() in ("1", "true", "yes")
        self.barrier_mode = ("mpi" if yields else "poll") if barrier == "auto" else barrier
        if self.comm is None:
            self.barrier_mode = "gloo"
        self.g = mw.init()
        self.topo = self.g.topo
        self.rank, self.size = self.topo.rank, self.topo.world_size
        self.gloo = self._gloo_group()
        self.vcluster = bool(os.environ.get("VCLUSTER_NODE_NAME") or os.environ.get("VCLUSTER_PREFIX"))
        self.wire = WireCounter() if self.vcluster and self.topo.num_nodes > 1 else None

    def _gloo_group(self):
        import torch.distributed as dist
        if dist.is_initialized():
            return dist.group.WORLD
        timeout = datetime.timedelta(seconds=self.timeout_s)
        if self.launcher == "torchrun":
            dist.init_process_group("gloo", timeout=timeout)
        else:
            store = self._store_over_mpi(timeout)
            dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.size, timeout=timeout)
        return dist.group.WORLD

    def _store_over_mpi(self, timeout):
        import torch.distributed as dist
        comm = self.comm
        if comm.Get_rank() == 0:
            store = dist.TCPStore("0.0.0.0", 0, comm.Get_size(), True, timeout, wait_for_workers=False)
            addr = (_my_address(), store.port)
        else:
            addr = None
        addr = comm.bcast(addr, root=0)
        if comm.Get_rank() != 0:
            store = dist.TCPStore(addr[0], addr[1], comm.Get_size(), False, timeout)
        return dist.PrefixStore("multiwrite-bench", store)

    # -- control -----------------------------------------------------------------------------
    def barrier(self):
        """All ranks arrive before any leaves; polls with sleeps (no busy spin that would steal the
        2 cores from the ranks still working) and gives up after MULTIWRITE_TIMEOUT."""
        if self.comm is not None:
            if self.barrier_mode == "mpi":
                self.comm.Barrier()
                return
            req = self.comm.Ibarrier()
            if not poll(req.Test, self.timeout_s, spin_s=0.0005, nap_min_s=2e-5, nap_max_s=1e-4):
                raise TimeoutError(f"benchmark barrier: timed out after {self.timeout_s:g}s")
            return
        import torch.distributed as dist
        dist.barrier(group=self.gloo)

    def allgather_obj(self, obj):
        if self.comm is not None:
            return self.comm.allgather(obj)
        import torch.distributed as dist
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.gloo)
        return out

    def close(self):
        import torch.distributed as dist
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _my_address():
    """An address of this rank's node that the other nodes reach (vcluster: the node's eth0)."""
    addrs = os.environ.get("VCLUSTER_NODE_ADDRS")
    node = os.environ.get("VCLUSTER_NODE_RANK")
    if addrs and node is not None:
        try:
            return addrs.split(",")[int(node)]
        except (ValueError, IndexError):
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class WireCounter:
    """Bytes this node's eth0 transmitted (/proc/net/dev of the rank's network namespace): the real
    inter-node traffic of any implementation, TCP/IP/Ethernet headers included."""

    def __init__(self, ifname="eth0"):
        self.ifname = ifname
        self.ok = self.read() is not None

    def read(self):
        try:
            with open("/proc/net/dev") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name.strip() == self.ifname:
                        return int(rest.split()[8])
        except OSError:
            return None
        return None

