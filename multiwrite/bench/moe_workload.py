"""The MoE workload of the dispatch and combine benchmarks: its flags and token counts, every rank's
tokens and routing (regenerated locally from the seeds), the bytes each scheme sends over the links,
and the reference results each rank checks against."""
import numpy as np
import torch

from .._util import parse_sizes
from .options import DTYPES, sizes_from_args

WORKLOAD_HELP = """
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

ROUTINGS = ("uniform", "skewed")


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
        sizes = sizes_from_args(args, args.minbytes, args.minbytes)
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
        self.dtype = DTYPES[args.dtype]
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

