"""MoE dispatch implementations of the benchmark: MPI Alltoallv with per-rank dedup, Gloo's per-expert
permute + all_to_all_single, multiwrite Buffer.dispatch (unicast and MultiWrite); each checked
against the workload's references. DOC is the subcommand's --help text."""
import numpy as np
import torch

from .checks import wrong_shape
from .harness import Impl, MWImpl
from .moe_workload import WORKLOAD_HELP

DOC = """MoE dispatch: MPI Alltoallv (per-rank dedup), Gloo permute + all_to_all_single, multiwrite unicast / MultiWrite.

Implementations, run interleaved on the same tokens and routing (each call includes its own layout
computation and count exchange, as in a training step):
  mpi        MPI's own: per-rank dedup, the best flat scheme: a token goes once to every rank that
             holds one of its experts (packed with its top-k ids and weights), MPI_Alltoall of the counts,
             MPI_Alltoallv of the rows; the receiver converts ids to local ones.
  gloo       Gloo's own, the usual per-expert scheme: permute (sort the (token, expert) pairs by
             expert), all_to_all_single of the per-expert counts, all_to_all_single of the rows: one
             copy per chosen expert.
  unicast    multiwrite Buffer.dispatch, mode="unicast": one copy per destination rank.
  multiwrite multiwrite Buffer.dispatch, MultiWrite: one copy per destination node, fanned out there
             through shared memory.
Checked: received rows (and for mpi/multiwrite: local top-k ids, weights, tokens per expert; for gloo:
rows per expert in source/expert/token order and the counts).
""" + WORKLOAD_HELP + """
Columns: nccl-tests' size count type | time(us) algbw busbw #wrong (algbw = T*H*elt / time, busbw =
algbw*(P-1)/P), then inter-node B/op (bytes leaving the busiest node per call: multiwrite from
mw.stats(), records with ids/weights and headers included; mpi/gloo from the routing: rows + ids +
counts they send to ranks of other nodes), dedup (per-expert copies bytes / these bytes), bound(us)
(max over node links of the token bytes that must cross it with dedup -- one row per (token, remote
node) -- / link rate + one node-to-node latency), time/bound, vs best base (time / faster of mpi, gloo).
"""


class MoEImpl(Impl):
    """An implementation run on a Workload (``wl``): prepare() sets up the workload's iteration."""

    def __init__(self, ctx, wl):
        self.ctx, self.wl = ctx, wl
        self.result = None

    def prepare(self, it):
        self.wl.iteration(it)
        self.result = None


class MPIDispatch(MoEImpl):
    """Per-rank dedup over MPI_Alltoallv: each token once per destination rank, with ids and weights."""
    name = "mpi"

    def __init__(self, ctx, wl):
        super().__init__(ctx, wl)
        self.meta = torch.cat([wl.idx.view(torch.uint8).reshape(wl.T, -1), wl.w.view(torch.uint8).reshape(wl.T, -1)], 1)

    def run(self):
        wl, MPI, comm = self.wl, self.ctx.MPI, self.ctx.comm
        P, T, rb, k = wl.P, wl.T, wl.rb, wl.k
        ids = wl.idx
        dr = torch.where(ids >= 0, ids // wl.per, torch.full_like(ids, P))
        mask = torch.zeros(T, P + 1, dtype=torch.bool).scatter_(1, dr, True)[:, :P]
        d_of, tok = torch.nonzero(mask.t(), as_tuple=True)           # sorted by destination, then token
        counts = torch.bincount(d_of, minlength=P)
        rowlen = rb + 12 * k
        packed = torch.cat([wl.x.view(torch.uint8).reshape(T, rb), self.meta], 1)
        send = packed.index_select(0, tok)
        rcounts = np.empty(P, dtype=np.int64)
        comm.Alltoall(counts.numpy(), rcounts)
        R = int(rcounts.sum())
        recv = torch.empty(R, rowlen, dtype=torch.uint8)
        sc = counts.numpy() * rowlen
        rc = rcounts * rowlen
        comm.Alltoallv([send.numpy(), (sc, displs(sc)), MPI.BYTE], [recv.numpy(), (rc, displs(rc)), MPI.BYTE])
        recv_x = recv[:, :rb].contiguous().view(wl.dtype)
        gid = recv[:, rb:rb + 8 * k].contiguous().view(torch.int64)
        recv_idx = torch.where((gid >= wl.lo) & (gid < wl.hi), gid - wl.lo, torch.full_like(gid, -1))
        recv_w = recv[:, rb + 8 * k:].contiguous().view(torch.float32)
        per_expert = torch.bincount(recv_idx[recv_idx >= 0], minlength=wl.per)
        self.result = (recv_x, recv_idx, recv_w, per_expert, tok, counts, rcounts)

    def check(self, it):
        wl = self.wl
        x, idx, w, per_expert = self.result[:4]
        return (wrong_shape(x, wl.exp_x) + wrong_shape(idx, wl.exp_idx) + wrong_shape(w, wl.exp_w)
                + int(per_expert.tolist() != wl.exp_per_expert))


class GlooDispatch(MoEImpl):
    """The usual per-expert dispatch: permute by expert, all_to_all_single counts, then rows."""
    name = "gloo"

    def run(self):
        import torch.distributed as dist
        wl, grp = self.wl, self.ctx.gloo
        P, E, k = wl.P, wl.E, wl.k
        flat = wl.idx.reshape(-1)
        keys = torch.where(flat >= 0, flat, torch.full_like(flat, E))
        sorted_keys, perm = torch.sort(keys, stable=True)
        nvalid = int((flat >= 0).sum())
        token_of = perm[:nvalid] // k
        send = wl.x.index_select(0, token_of)
        counts = torch.bincount(sorted_keys[:nvalid], minlength=E)
        rcounts = torch.empty_like(counts)
        dist.all_to_all_single(rcounts, counts, group=grp)
        in_splits = counts.view(P, wl.per).sum(1).tolist()
        out_splits = rcounts.view(P, wl.per).sum(1).tolist()
        recv = torch.empty(sum(out_splits), wl.H, dtype=wl.dtype)
        dist.all_to_all_single(recv, send, out_splits, in_splits, group=grp)
        self.result = (recv, rcounts.view(P, wl.per), token_of, in_splits, out_splits)

    def check(self, it):
        recv, rcounts = self.result[:2]
        return wrong_shape(recv, self.wl.pe_x) + int((rcounts != self.wl.pe_counts).sum())


class MWDispatch(MoEImpl, MWImpl):
    def __init__(self, ctx, wl, mode):
        super().__init__(ctx, wl)
        import multiwrite as mw
        self.name = mode
        self.buf = mw.Buffer(mode=mode)

    def run(self):
        wl = self.wl
        self.result = self.buf.dispatch(wl.x, wl.idx, wl.w, wl.E)

    def check(self, it):
        wl = self.wl
        x, idx, w, per_expert, handle = self.result
        self.path = "low_latency" if handle.low_latency else "normal"      # reported in the rows
        return (wrong_shape(x, wl.exp_x) + wrong_shape(idx, wl.exp_idx) + wrong_shape(w, wl.exp_w)
                + int(list(per_expert) != wl.exp_per_expert))


def displs(counts):
    """MPI displacements of ``counts``: their exclusive prefix sums."""
    d = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=d[1:])
    return d


def impls(ctx, names, wl):
    """The dispatch implementations ``names`` on workload ``wl``."""
    return [MPIDispatch(ctx, wl) if n == "mpi" else GlooDispatch(ctx, wl) if n == "gloo" else MWDispatch(ctx, wl, n)
            for n in names]
