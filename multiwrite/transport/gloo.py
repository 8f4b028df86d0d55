"""Transport over torch's Gloo process group (real TCP sockets), rendezvous through a c10d store."""
import datetime
import pickle

import numpy as np
import torch

from ..errors import MultiwriteError, MultiwriteTimeout, PeerFailure
from .base import CompletedRequest, Request, Transport, seconds, waiting_hint


# What Gloo's errors say when the peer's process is gone (its sockets closed or reset).
_PEER_GONE = ("connection closed by peer", "connection reset", "broken pipe", "socket closed", "end of file",
              "eof", "connection refused", "no route to host")


def classify_error(exc, what, description, peer, timeout_s):
    """A Gloo RuntimeError as a multiwrite error: a timeout, a peer that is gone (PeerFailure naming
    ``peer``), or another transport failure. Never a MismatchError: Gloo does not report sizes."""
    text = str(exc)
    low = text.lower()
    where = f"{what or 'operation'}: "
    if "imeout" in text or "imed out" in text:
        return MultiwriteTimeout(
            f"{where}timed out after {seconds(timeout_s)}s waiting for {description} ({waiting_hint(peer)}; "
            f"MULTIWRITE_TIMEOUT sets the limit)")
    if any(p in low for p in _PEER_GONE):
        who = f"rank {peer}" if peer is not None else "a peer"
        return PeerFailure(f"{where}{who} is gone (its connection broke while {description} was pending: the "
                           f"process died or was killed): {text.strip()[:300]}", rank=peer)
    return MultiwriteError(f"{where}the Gloo transport failed during {description}: {text.strip()[:300]}")


class _GlooRequest(Request):
    __slots__ = ("work", "tensor", "description", "peer")

    def __init__(self, work, tensor, description, peer=None):
        self.work, self.tensor, self.description, self.peer = work, tensor, description, peer

    def test(self):
        return self.work.is_completed()

    def wait(self, timeout_s, what=""):
        try:
            self.work.wait(datetime.timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            raise classify_error(exc, what, self.description, self.peer, timeout_s) from exc


class _GlooAnyRequest(_GlooRequest):
    """A receive from any rank: ``source()`` and ``count()`` once complete."""
    __slots__ = ()

    def source(self):
        work = self.work
        return work._source_rank() if hasattr(work, "_source_rank") else work.source_rank()

    def count(self):
        return self.tensor.numel()


class GlooTransport(Transport):
    name = "gloo"
    exact_size_recv = True    # a message larger than the posted receive aborts the process
    completes_in_test = False  # requests complete inside wait()
    recv_any_source = False    # irecv_any exists, but only wait() completes it (no polling loop)
    _instances = 0

    def __init__(self, store, rank, size, timeout_s=300.0, prefix="multiwrite"):
        from torch.distributed import PrefixStore, ProcessGroupGloo
        GlooTransport._instances += 1
        self.store = store
        self.rank, self.size, self.timeout_s = rank, size, timeout_s
        self.prefix = prefix
        try:
            self.pg = ProcessGroupGloo(PrefixStore(prefix, store), rank, size,
                                       datetime.timedelta(seconds=timeout_s))
        except RuntimeError as exc:     # a rank that never connects: a timeout, said as such
            raise classify_error(exc, "connecting the Gloo transport", "every rank to connect", None,
                                 timeout_s) from exc

    @staticmethod
    def _tensor(buf):
        return torch.from_numpy(buf)

    def isend(self, buf, dst, tag):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        t = self._tensor(buf)
        return _GlooRequest(self.pg.send([t], dst, tag), t, f"send of {buf.nbytes} B to rank {dst}", dst)

    def irecv(self, buf, src, tag, *, agreed=True):
        # ``agreed`` changes nothing: Gloo needs exact sizes, so callers know the size when they post
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        t = self._tensor(buf)
        return _GlooRequest(self.pg.recv([t], src, tag), t, f"receive of {buf.nbytes} B from rank {src}", src)

    def irecv_any(self, buf, tag, *, agreed=True):
        self.check_buffer(buf)
        t = self._tensor(buf)
        return _GlooAnyRequest(self.pg.recv_anysource([t], tag), t, f"receive of {buf.nbytes} B from any rank")

    def wait_or_stop(self, req, stop):
        # Gloo completes a receive only inside wait(), which cannot be interrupted: the caller wakes it
        # with a message when it sets ``stop``.
        req.wait(7 * 24 * 3600.0, "waiting for a packet")
        return not stop.is_set()

    def drain(self, src, tag, nbytes, limit):
        # Gloo needs a receive of exactly the message's size: only bounded sizes can be drained.
        if nbytes > limit:
            return None
        return self.irecv(np.empty(nbytes, dtype=np.uint8), src, tag)

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
