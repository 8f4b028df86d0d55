"""MoE dispatch and combine: MPI Alltoallv (per-rank dedup), Gloo permute + all_to_all_single (per-expert
copies), multiwrite unicast and MultiWrite, interleaved on the same tokens and routing.

See DOCS["dispatch"] / DOCS["combine"] (the --help texts) for what is timed and checked.
"""
import sys

import numpy as np
import torch

from . import common, format_size, parse_sizes

_WORKLOAD = """
Workload (DeepEP convention): E experts split contiguously over the P ranks (expert e on rank e // (E/P)),
every rank has T tokens of H values (dtype -d) and routes each to its top-k experts; routing "uniform"
(k distinct experts uniformly at random) or "skewed" (k distinct experts drawn with Zipf popularity
p(e) ~ 1/rank(e)^s over a fixed random ranking of the experts, s = --zipf). Defaults: E=64, k=8, H=4096,
bf16, T=256. The sweep is over T: -T 256, -T 64..1024 (times -f), or -b/-e as bytes of x per rank
(T = bytes / (H * element size)); the size column is T*H*element bytes per rank, count = T*H.

Each iteration uses new token data (the first 2 bytes of every row carry an (iteration, source, token)
key), the routing is fixed per size. Every result of every implementation is compared element by
element with what each rank computes locally from the seeds (never from what the network delivered).
"""

DOCS = {
    "dispatch": """MoE dispatch: MPI Alltoallv (per-rank dedup), Gloo permute + all_to_all_single, multiwrite unicast / MultiWrite.

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
""" + _WORKLOAD + """
Columns: nccl-tests' size count type | time(us) algbw busbw #wrong (algbw = T*H*elt / time, busbw =
algbw*(P-1)/P), then inter-node B/op (bytes leaving the busiest node per call: multiwrite from
mw.stats(), records with ids/weights and headers included; mpi/gloo from the routing: rows + ids +
counts they send to ranks of other nodes), dedup (per-expert copies bytes / these bytes), bound(us)
(max over node links of the token bytes that must cross it with dedup -- one row per (token, remote
node) -- / link rate + one node-to-node latency), time/bound, vs best base (time / faster of mpi, gloo).
""",
    "combine": """MoE combine: MPI Alltoallv + sum, Gloo all_to_all_single + unpermute-sum, multiwrite unicast / MultiWrite.

The reverse of dispatch: every rank holds expert outputs for the rows it received and returns them
to the token's source rank, which sums them per token (weighting is the caller's job, as in DeepEP).
Layouts come from one untimed dispatch per implementation and size; timed: the transfer and the
final per-token sum.
  mpi        MPI_Alltoallv of one row per (token, rank) (the rank's experts pre-summed), index_add at
             the source.
  gloo       all_to_all_single of one row per (token, expert), index_add ("unpermute") at the source.
  unicast    multiwrite Buffer.combine, mode="unicast": one row per (token, rank) back.
  multiwrite multiwrite Buffer.combine, MultiWrite: the rows of a node are summed in shared memory, one
             partial sum per (token, node) crosses the network.
Expert outputs are small integers (exact in bf16/fp16, any summation order), so every result is
checked bit for bit against the sum each source rank computes locally.
""" + _WORKLOAD + """
Columns as for dispatch; the bound counts one row per (token, remote node) on the way back.
""",
}

ROUTINGS = ("uniform", "skewed")


def add_arguments(parser, name="dispatch"):
    common.add_common_arguments(parser, sizes_help="bytes of x per rank (T*H*element); overrides -T (default: from -T)")
    add_workload_arguments(parser)


def add_workload_arguments(parser):
    g = parser.add_argument_group("MoE workload")
    g.add_argument("-E", "--experts", type=int, default=64, help="number of experts E, a multiple of P (default %(default)s)")
    g.add_argument("-k", "--topk", type=int, default=8, help="experts per token (default %(default)s)")
    g.add_argument("-H", "--hidden", type=int, default=4096, help="hidden size H, values per token (default %(default)s)")
    g.add_argument("-T", "--tokens", default="256",
                   help="tokens per rank: a number, a list 64,256 or a range LO..HI in steps of -f (default %(default)s)")
    g.add_argument("--routing", choices=ROUTINGS, default="uniform", help="expert choice (default %(default)s)")
    g.add_argument("--combine-input", choices=("zero-copy", "copy"), default="zero-copy",
                   help="multiwrite combine's input: zero-copy = the expert outputs are written (untimed, like "
                        "every implementation's input) into the node buffer Buffer.get_combine_buffer hands out "
                        "(DeepEP's zero-copy combine buffer); copy = an ordinary tensor that combine copies into "
                        "the node buffer, timed (default %(default)s; unicast always copies)")
    g.add_argument("--zipf", type=float, default=1.2,
                   help="skewed routing: Zipf exponent s, popularity of the i-th most popular expert ~ 1/i^s "
                        "(default %(default)s)")


def token_counts(args, row_bytes):
    """The T values of the sweep: from -b/-e (bytes of x per rank) when given, else from -T."""
    if args.minbytes is not None:
        sizes = common.sizes_from_args(args, args.minbytes, args.minbytes)
        return sorted({max(1, s // row_bytes) for s in sizes})
    text = str(args.tokens)
    ts = parse_sizes(text, factor=max(args.stepfactor, 2)) if ".." in text else \
        [int(p) for p in text.split(",") if p.strip()]
    if not ts or min(ts) < 1:
        raise ValueError(f"-T {text!r}: token counts must be >= 1")
    return ts


def check_workload(args, P):
    if args.experts < 1 or args.experts % P:
        raise ValueError(f"-E {args.experts} must be a positive multiple of the number of ranks ({P})")
    if not 1 <= args.topk <= args.experts:
        raise ValueError(f"-k {args.topk} must be in [1, E={args.experts}]")
    if args.hidden < 1:
        raise ValueError("-H must be >= 1")
    if args.dtype not in ("bfloat16", "bf16", "float16", "fp16", "half", "float32", "float", "fp32"):
        raise ValueError(f"-d {args.dtype}: dispatch/combine take float32, float16 or bfloat16")


# ---------------------------------------------------------------------------------------------------
# the workload of one size: every rank's tokens and routing (regenerated locally from the seeds)

def _routing(args, s, T, seed):
    E, k = args.experts, args.topk
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * s + T)
    if args.routing == "uniform":
        scores = torch.rand(T, E, generator=g)
        w, idx = torch.topk(scores, k, dim=1)
    else:
        ranking = torch.randperm(E, generator=torch.Generator().manual_seed(seed))   # same on every rank
        pop = 1.0 / (ranking.double() + 1.0) ** args.zipf
        idx = torch.multinomial(pop.expand(T, E).float(), k, replacement=False, generator=g)
        w = torch.rand(T, k, generator=g)
    w = torch.softmax(w.float(), dim=1).contiguous()
    return idx.to(torch.int64).contiguous(), w


def _tokens(s, T, H, dtype, seed):
    g = torch.Generator().manual_seed(seed * 2_000_003 + 104729 * s + T)
    return torch.randn(T, H, generator=g).to(dtype)


def _key(it, src, tok):
    """uint16 key of row (src, tok) in iteration it -> (n, 2) bytes."""
    k = (np.int64(it) * 7919 + np.asarray(src, dtype=np.int64) * 1009 + np.asarray(tok, dtype=np.int64) * 31 + 1) & 0xFFFF
    return k.astype("<u2").view(np.uint8).reshape(-1, 2)


def _a(src, tok, e, it):
    """Synthetic expert output offset a(s, t, e) in [0, 7] (the row is a + (column % 8))."""
    return (src + 3 * tok + 5 * e + it) % 8


class Workload:
    """Tokens, routing and the reference results of one size, from this rank's point of view."""

    def __init__(self, ctx, args, T):
        P, me = ctx.size, ctx.rank
        topo = ctx.topo
        self.P, self.me, self.T = P, me, T
        self.E, self.k, self.H = args.experts, args.topk, args.hidden
        self.dtype = common.DTYPES[args.dtype]
        self.per = self.E // P
        self.lo, self.hi = me * self.per, (me + 1) * self.per
        self.esize = torch.empty(0, dtype=self.dtype).element_size()
        self.rb = self.H * self.esize
        self.node_of = torch.tensor(topo.node_of, dtype=torch.int64)
        self.N = topo.num_nodes
        routes = [_routing(args, s, T, args.seed) for s in range(P)]
        self.idx_all = [r[0] for r in routes]
        self.w_all = [r[1] for r in routes]
        X = [_tokens(s, T, self.H, self.dtype, args.seed) for s in range(P)]
        self.idx, self.w = self.idx_all[me], self.w_all[me]
        self.x = X[me].clone()
        self.x_bytes = self.x.view(torch.uint8).numpy()          # [T, rb]
        self.col8_dt = (torch.arange(self.H) % 8).to(self.dtype)
        self.exp_out = self.y_dedup = self.y_pe = None

        # dispatch reference, rank-dedup order (source rank, token): mpi and multiwrite
        src, tok, rows_x, rows_idx, rows_w = [], [], [], [], []
        for s in range(P):
            ids = self.idx_all[s]
            hit = ((ids >= self.lo) & (ids < self.hi)).any(dim=1)
            t = torch.nonzero(hit).flatten()
            src.append(torch.full((len(t),), s, dtype=torch.int64))
            tok.append(t)
            rows_x.append(X[s][t])
            sel = ids[t]
            rows_idx.append(torch.where((sel >= self.lo) & (sel < self.hi), sel - self.lo, torch.full_like(sel, -1)))
            rows_w.append(self.w_all[s][t])
        self.exp_src = torch.cat(src).numpy()
        self.exp_tok = torch.cat(tok).numpy()
        self.exp_x = torch.cat(rows_x) if rows_x else torch.empty(0, self.H, dtype=self.dtype)
        self.exp_x_bytes = self.exp_x.view(torch.uint8).numpy()
        self.exp_idx = torch.cat(rows_idx)
        self.exp_w = torch.cat(rows_w)
        li = self.exp_idx[self.exp_idx >= 0]
        self.exp_per_expert = torch.bincount(li, minlength=self.per).tolist()
        # global ids of my experts chosen by each received row (-1 elsewhere), for combine's outputs
        self.dedup_local_global = torch.where(self.exp_idx >= 0, self.exp_idx + self.lo, torch.full_like(self.exp_idx, -1))

        # dispatch reference, per-expert order (source, expert, token): gloo
        psrc, ptok, pexp, pcounts, prow = [], [], [], [], []
        for s in range(P):
            ids = self.idx_all[s]
            t_of, j = torch.nonzero((ids >= self.lo) & (ids < self.hi), as_tuple=True)
            e = ids[t_of, j]
            order = torch.argsort(e * T + t_of, stable=True)
            t_of, e = t_of[order], e[order]
            psrc.append(torch.full((len(t_of),), s, dtype=torch.int64))
            ptok.append(t_of)
            pexp.append(e)
            pcounts.append(torch.bincount(e - self.lo, minlength=self.per))
            prow.append(X[s][t_of])
        self.pe_src = torch.cat(psrc).numpy()
        self.pe_tok = torch.cat(ptok).numpy()
        self.pe_exp = torch.cat(pexp)
        self.pe_counts = torch.stack(pcounts)                   # [P, per]
        self.pe_x = torch.cat(prow) if prow else torch.empty(0, self.H, dtype=self.dtype)
        self.pe_x_bytes = self.pe_x.view(torch.uint8).numpy()
        del X

        self._traffic(topo)
        self.it = None

    # -- bytes on the links (from the global routing) --------------------------------------------
    def _traffic(self, topo):
        P, N, T, k = self.P, self.N, self.T, self.k
        node_of = self.node_of
        rb, meta = self.rb, 12 * self.k
        eg_dedup = [0] * N          # token rows leaving each node, one per (token, remote node)
        in_dedup = [0] * N
        pe_out = [0] * N            # gloo per-expert bytes leaving each node (dispatch direction)
        pe_back = [0] * N           # ... and on the way back (combine)
        rk_out = [0] * N            # mpi per-rank dedup bytes (rows + ids/weights)
        rk_back = [0] * N
        self.copies = {"per_expert": 0, "per_rank": 0, "per_node": 0}    # remote copies over all ranks
        for s in range(P):
            n = int(node_of[s])
            ids = self.idx_all[s]
            valid = ids >= 0
            dr = torch.where(valid, ids // self.per, torch.full_like(ids, P))
            dn = torch.where(valid, node_of[dr.clamp(max=P - 1)], torch.full_like(ids, N))
            rmask = torch.zeros(T, P + 1, dtype=torch.bool).scatter_(1, dr, True)[:, :P]
            nmask = torch.zeros(T, N + 1, dtype=torch.bool).scatter_(1, dn, True)[:, :N]
            remote_rank = node_of != n
            remote_node = torch.arange(N) != n
            per_node_rows = nmask[:, remote_node].sum().item()
            eg_dedup[n] += per_node_rows * rb
            for m in range(N):
                if m != n:
                    in_dedup[m] += int(nmask[:, m].sum()) * rb
            remote_pairs = int((valid & (dn != n)).sum())
            pe_out[n] += remote_pairs * rb + int(remote_rank.sum()) * self.per * 8
            rk_rows = int(rmask[:, remote_rank].sum())
            rk_out[n] += rk_rows * (rb + meta) + int(remote_rank.sum()) * 8
            for d in range(P):
                m = int(node_of[d])
                if m == n:
                    continue
                pe_back[m] += int((dr == d).sum()) * rb
                rk_back[m] += int(rmask[:, d].sum()) * rb
            self.copies["per_expert"] += remote_pairs
            self.copies["per_rank"] += rk_rows
            self.copies["per_node"] += per_node_rows
        self.dedup_egress, self.dedup_ingress = eg_dedup, in_dedup
        self.baseline_bytes = {"dispatch": {"gloo": pe_out, "mpi": rk_out}, "combine": {"gloo": pe_back, "mpi": rk_back}}
        self.per_expert_bytes = {"dispatch": max(pe_out) if N > 1 else 0,
                                 "combine": max(pe_back) if N > 1 else 0}

    # -- per-iteration data ---------------------------------------------------------------------
    def iteration(self, it):
        if it == self.it:
            return
        self.it = it
        self.x_bytes[:, 0:2] = _key(it, np.full(self.T, self.me), np.arange(self.T))
        self.exp_x_bytes[:, 0:2] = _key(it, self.exp_src, self.exp_tok)
        self.pe_x_bytes[:, 0:2] = _key(it, self.pe_src, self.pe_tok)
        self._combine_refs(it)

    def _combine_refs(self, it):
        """Expert outputs and the combine reference of iteration ``it``, written in place into buffers
        made once per size: every value is a small integer (< 256, exact in bf16/fp16/fp32), so no
        [rows, H] integer temporaries are needed. Fresh [rows, H] temporaries every iteration (~250 MB
        per rank at T=256) cost ~90 ms of CPU per rank between the timed calls on the 2 x 4 virtual
        cluster, mostly page faults (a fresh page costs 7-16 us on that VM; docs/benchmarks.md)."""
        col8 = self.col8_dt
        if self.exp_out is None:
            self.exp_out = torch.empty(self.T, self.H, dtype=self.dtype)
            self.y_dedup = torch.empty(len(self.exp_src), self.H, dtype=self.dtype)
            self.y_pe = torch.empty(len(self.pe_src), self.H, dtype=self.dtype)
        # source side: out[t] = sum over valid experts e of (a(me, t, e) + col % 8)
        ids = self.idx
        t = torch.arange(self.T)[:, None].expand_as(ids)
        a = torch.where(ids >= 0, _a(self.me, t, ids, it), torch.zeros_like(ids))
        _rows_plus_col8(self.exp_out, a.sum(1), (ids >= 0).sum(1), col8)
        # rank-dedup rows (mpi, multiwrite, unicast): pre-summed over this rank's experts
        g = self.dedup_local_global
        src = torch.from_numpy(self.exp_src)[:, None].expand_as(g)
        tok = torch.from_numpy(self.exp_tok)[:, None].expand_as(g)
        a = torch.where(g >= 0, _a(src, tok, g, it), torch.zeros_like(g))
        _rows_plus_col8(self.y_dedup, a.sum(1), (g >= 0).sum(1), col8)
        # per-expert rows (gloo)
        a = _a(torch.from_numpy(self.pe_src), torch.from_numpy(self.pe_tok), self.pe_exp, it)
        _rows_plus_col8(self.y_pe, a, torch.ones_like(a), col8)


def _rows_plus_col8(out, base, times, col8):
    """out[r, c] = base[r] + times[r] * (c % 8), in place (col8: c % 8 in out's dtype)."""
    torch.mul(times.to(out.dtype)[:, None], col8[None, :], out=out)
    out.add_(base.to(out.dtype)[:, None])


def _wrong(got, expected):
    return common.count_wrong_elements(got, expected, expected.element_size() if isinstance(expected, torch.Tensor) else 1)


def _wrong_shape(got, expected):
    """Elements wrong, or all of them when the shapes differ."""
    if tuple(got.shape) != tuple(expected.shape):
        return max(got.numel(), expected.numel(), 1)
    return _wrong(got, expected)


# ---------------------------------------------------------------------------------------------------
# dispatch implementations

class _Impl(common.Impl):
    def __init__(self, ctx, wl):
        self.ctx, self.wl = ctx, wl
        self.result = None

    def prepare(self, it):
        self.wl.iteration(it)
        self.result = None


class MPIDispatch(_Impl):
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
        comm.Alltoallv([send.numpy(), (sc, _displs(sc)), MPI.BYTE], [recv.numpy(), (rc, _displs(rc)), MPI.BYTE])
        recv_x = recv[:, :rb].contiguous().view(wl.dtype)
        gid = recv[:, rb:rb + 8 * k].contiguous().view(torch.int64)
        recv_idx = torch.where((gid >= wl.lo) & (gid < wl.hi), gid - wl.lo, torch.full_like(gid, -1))
        recv_w = recv[:, rb + 8 * k:].contiguous().view(torch.float32)
        per_expert = torch.bincount(recv_idx[recv_idx >= 0], minlength=wl.per)
        self.result = (recv_x, recv_idx, recv_w, per_expert, tok, counts, rcounts)

    def check(self, it):
        wl = self.wl
        x, idx, w, per_expert = self.result[:4]
        return (_wrong_shape(x, wl.exp_x) + _wrong_shape(idx, wl.exp_idx) + _wrong_shape(w, wl.exp_w)
                + int(per_expert.tolist() != wl.exp_per_expert))


class GlooDispatch(_Impl):
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
        return _wrong_shape(recv, self.wl.pe_x) + int((rcounts != self.wl.pe_counts).sum())


class MWDispatch(_Impl):
    uses_mw = True

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
        return (_wrong_shape(x, wl.exp_x) + _wrong_shape(idx, wl.exp_idx) + _wrong_shape(w, wl.exp_w)
                + int(list(per_expert) != wl.exp_per_expert))

    def inter_bytes(self):
        import multiwrite as mw
        return mw.stats()["inter_node"]["bytes"]


def _displs(counts):
    d = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=d[1:])
    return d


# ---------------------------------------------------------------------------------------------------
# combine implementations (layouts from one untimed dispatch each)

class _CombineBase(_Impl):
    def __init__(self, ctx, wl, dispatcher):
        super().__init__(ctx, wl)
        self.dispatcher = dispatcher
        dispatcher.prepare(0)
        dispatcher.run()
        self.layout = dispatcher.result
        if dispatcher.check(0):
            raise RuntimeError(f"combine benchmark: the {dispatcher.name} dispatch that sets up the layout is wrong")
        self.out = None

    def check(self, it):
        return _wrong_shape(self.out, self.wl.exp_out)


class MPICombine(_CombineBase):
    name = "mpi"

    def run(self):
        wl, MPI, comm = self.wl, self.ctx.MPI, self.ctx.comm
        tok, counts, rcounts = self.layout[4:7]
        y = wl.y_dedup
        back = torch.empty(len(tok), wl.H, dtype=wl.dtype)
        rb = wl.rb
        sc = rcounts * rb
        rc = counts.numpy() * rb
        comm.Alltoallv([y.view(torch.uint8).numpy().reshape(-1), (sc, _displs(sc)), MPI.BYTE],
                       [back.view(torch.uint8).numpy().reshape(-1), (rc, _displs(rc)), MPI.BYTE])
        out = torch.zeros(wl.T, wl.H, dtype=wl.dtype)
        out.index_add_(0, tok, back)
        self.out = out


class GlooCombine(_CombineBase):
    name = "gloo"

    def run(self):
        import torch.distributed as dist
        wl = self.wl
        token_of, in_splits, out_splits = self.layout[2:5]
        back = torch.empty(len(token_of), wl.H, dtype=wl.dtype)
        dist.all_to_all_single(back, wl.y_pe, in_splits, out_splits, group=self.ctx.gloo)
        out = torch.zeros(wl.T, wl.H, dtype=wl.dtype)
        out.index_add_(0, token_of, back)      # unpermute: sum the k expert outputs of every token
        self.out = out


class MWCombine(_CombineBase):
    uses_mw = True

    def __init__(self, ctx, wl, mode, zero_copy=True):
        self.name = mode
        super().__init__(ctx, wl, MWDispatch(ctx, wl, mode))
        self.buf = self.dispatcher.buf
        self.handle = self.layout[4]
        self.zero_copy = zero_copy and mode == "multiwrite"
        self.y = None

    def prepare(self, it):
        super().prepare(it)
        self.y = self.wl.y_dedup
        if self.zero_copy:
            # The experts' outputs land in the buffer combine reads (DeepEP's zero-copy convention),
            # written untimed like every implementation's input.
            self.y = self.buf.get_combine_buffer(self.handle)
            self.y.copy_(self.wl.y_dedup)

    def run(self):
        self.out = self.buf.combine(self.y, self.handle)

    def inter_bytes(self):
        import multiwrite as mw
        return mw.stats()["inter_node"]["bytes"]


# ---------------------------------------------------------------------------------------------------
# driver

def _impls(ctx, op, names, wl, combine_zero_copy=True):
    out = []
    for n in names:
        if op == "dispatch":
            out.append(MPIDispatch(ctx, wl) if n == "mpi" else GlooDispatch(ctx, wl) if n == "gloo"
                       else MWDispatch(ctx, wl, n))
        else:
            out.append(MPICombine(ctx, wl, MPIDispatch(ctx, wl)) if n == "mpi" else
                       GlooCombine(ctx, wl, GlooDispatch(ctx, wl)) if n == "gloo" else
                       MWCombine(ctx, wl, n, combine_zero_copy))
    return out


def bench(ctx, args, op, tokens=None):
    """Run the dispatch or combine sweep; returns the benchmark document."""
    from .allgather import available_impls
    names = available_impls(ctx, common.check_common_args(args))
    check_workload(args, ctx.size)
    dtype = common.DTYPES[args.dtype]
    esize = torch.empty(0, dtype=dtype).element_size()
    row_bytes = args.hidden * esize
    if tokens is None:
        tokens = token_counts(args, row_bytes)
    rate, delay_us, rate_src = common.link_params(args)
    topo = ctx.topo
    P, N = ctx.size, topo.num_nodes
    progress = common.Progress(ctx, args.quiet, op)
    rows = []
    for T in tokens:
        wl = Workload(ctx, args, T)
        impls = _impls(ctx, op, names, wl, args.combine_input == "zero-copy")
        size = T * row_bytes
        progress(f"T={T} tokens per rank ({format_size(size)}): {len(impls)} implementations x "
                 f"{args.warmup_iters}+{args.iters} iterations", force=True)
        res = common.run_interleaved(ctx, impls, args.iters, args.warmup_iters, progress, f"T={T}:",
                                         order=args.order)
        bound = common.bound_us(wl.dedup_egress, wl.dedup_ingress, rate, delay_us) if N > 1 else None
        extra = {}
        for name, per_node in wl.baseline_bytes[op].items():
            if name in res and N > 1:
                extra[name] = {"inter_bytes": max(per_node), "inter_bytes_per_node": per_node}
        size_rows = common.make_rows(res, size=size, count=T * args.hidden, type_name=args.dtype, bound=bound, P=P,
                                     alg_bytes=size, bus_factor=(P - 1) / P, extra=extra)
        ref = wl.per_expert_bytes[op]
        for r in size_rows:
            r["tokens"] = T
            r["dedup_ratio"] = ref / r["inter_node_bytes"] if r.get("inter_node_bytes") and ref else None
            r["copies_remote"] = dict(wl.copies)
            r["bound_bytes"] = max(wl.dedup_egress + wl.dedup_ingress) if N > 1 else 0
        rows += size_rows
        for im in impls:
            im.release()
        del wl, impls
    meta = common.run_metadata(ctx, args, rate, delay_us, rate_src)
    meta.update(dtype=args.dtype, experts=args.experts, topk=args.topk, hidden=args.hidden, routing=args.routing,
                zipf=args.zipf if args.routing == "skewed" else None, tokens=list(tokens))
    if op == "combine":
        meta["combine_input"] = args.combine_input
    rt = f"{args.routing}" + (f" (Zipf s={args.zipf:g})" if args.routing == "skewed" else "")
    what = "MoE dispatch" if op == "dispatch" else "MoE combine"
    return {"benchmark": op, "meta": meta, "rows": rows, "size_label": f"bytes of x per rank (T x {args.hidden} x {esize} B)",
            "title": f"{what}: E={args.experts}, k={args.topk}, H={args.hidden} {args.dtype}, {rt}",
            "header": common.header_lines(ctx, op, args, rate, delay_us)
            + f"\n# {what}: E={args.experts} experts ({args.experts // P} per rank), top-{args.topk}, H={args.hidden}, "
              f"{args.dtype}, routing {rt}; size = T*H*element bytes per rank; bound: one row per (token, remote node)"}


def main(args):
    op = args.benchmark
    try:
        common.check_common_args(args)
        esize = torch.empty(0, dtype=common.DTYPES[args.dtype]).element_size()
        token_counts(args, args.hidden * esize)
    except ValueError as e:
        return common.fail(None, str(e))
    ctx = common.Context(barrier=args.barrier)
    try:
        try:
            check_workload(args, ctx.size)
        except ValueError as e:
            return common.fail(ctx, str(e))
        doc = bench(ctx, args, op)
        return common.emit(ctx, args, [doc])
    finally:
        ctx.close()
