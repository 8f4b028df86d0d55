"""Transport over torch's Gloo process group (real TCP sockets), rendezvous through a c10d store."""
import datetime
import pickle

import numpy as np
import torch

from ..errors import MultiwriteTimeout
from .base import CompletedRequest, Request, Transport, seconds


class _GlooRequest(Request):
    __slots__ = ("work", "tensor", "description")

    def __init__(self, work, tensor, description):
        self.work, self.tensor, self.description = work, tensor, description

    def test(self):
        return self.work.is_completed()

    def wait(self, timeout_s, what=""):
        try:
            self.work.wait(datetime.timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            text = str(exc)
            if "imeout" in text or "imed out" in text:
                raise MultiwriteTimeout(
                    f"{what or 'operation'}: timed out after {seconds(timeout_s)}s waiting for "
                    f"{self.description} (a peer died, hangs, or did not call the same operation)") from exc
            raise


class GlooTransport(Transport):
    name = "gloo"
    exact_size_recv = True    # a message larger than the posted receive aborts the process
    completes_in_test = False  # requests complete inside wait()
    _instances = 0

    def __init__(self, store, rank, size, timeout_s=300.0, prefix="multiwrite"):
        from torch.distributed import PrefixStore, ProcessGroupGloo
        GlooTransport._instances += 1
        self.store = store
        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        self.prefix = prefix
        self.pg = ProcessGroupGloo(PrefixStore(prefix, store), rank, size,
                                   datetime.timedelta(seconds=timeout_s))

    @staticmethod
    def _tensor(buf):
        return torch.from_numpy(buf)

    def isend(self, buf, dst, tag):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        t = self._tensor(buf)
        return _GlooRequest(self.pg.send([t], dst, tag), t, f"send of {buf.nbytes} B to rank {dst}")

    def irecv(self, buf, src, tag):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        t = self._tensor(buf)
        return _GlooRequest(self.pg.recv([t], src, tag), t, f"receive of {buf.nbytes} B from rank {src}")

    def _run(self, work, what):
        _GlooRequest(work, None, what).wait(self.timeout_s, what)

    def allgather_obj(self, obj):
        data = torch.from_numpy(np.frombuffer(pickle.dumps(obj), dtype=np.uint8).copy())
        size = torch.tensor([data.numel()], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        self._run(self.pg.allgather([sizes], [size]), "allgather of control data (sizes)")
        n = max(int(s.item()) for s in sizes)
        padded = torch.zeros(n, dtype=torch.uint8)
        padded[:data.numel()] = data
        outs = [torch.empty(n, dtype=torch.uint8) for _ in range(self.size)]
        self._run(self.pg.allgather([outs], [padded]), "allgather of control data")
        return [pickle.loads(outs[i][:int(sizes[i].item())].numpy().tobytes()) for i in range(self.size)]

    def allgather_int64(self, values):
        mine = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64).reshape(-1).copy())
        outs = [torch.empty_like(mine) for _ in range(self.size)]
        self._run(self.pg.allgather([outs], [mine]), "allgather of control data")
        return torch.stack(outs).numpy()

    def barrier(self):
        self.allgather_obj(None)

    def split(self, ranks, default_timeout_s=None):
        ranks = list(ranks)
        key = "_".join(map(str, ranks))
        # Every member of the parent must call split in the same order, so a counter is consistent.
        self._splits = getattr(self, "_splits", 0) + 1
        if self.rank not in ranks:
            return None
        sub = GlooTransport(self.store, ranks.index(self.rank), len(ranks), default_timeout_s or self.timeout_s,
                            prefix=f"{self.prefix}/split{self._splits}/{key}")
        sub.timeout_s = self.timeout_s
        return sub

    def close(self):
        pg, self.pg = getattr(self, "pg", None), None
        if pg is not None:
            try:
                pg.shutdown()
            except Exception:
                pass
