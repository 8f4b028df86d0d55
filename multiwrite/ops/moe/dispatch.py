"""MoE dispatch on MultiWrite: every token crosses to each destination *node* once.

Semantics (the DeepEP convention): experts are split contiguously, expert e lives on rank e // (E/P).
``topk_idx`` is int64 [T, k] with -1 meaning "no expert". Each rank receives one row per source token
that chose at least one of its experts, ordered by (source rank, source token index).

MultiWrite mode: for every destination node the sender packs, once, the rows of the tokens that go to
that node, each with the bitmap of destination ranks on that node (the C++ core plans and packs). The
packet crosses the network to one relay of that node, landing in the node's shared receive buffer;
every rank then unpacks its own rows from shared memory. Tokens for the sender's own node are packed
straight into that shared buffer. Large packets travel in pieces of ~2 MiB, one in flight per
destination, so that the node's ranks unpack the first pieces while the rest is on the wire.

Unicast mode: one copy per destination rank (per-rank deduplication, the best flat scheme); results
are identical.
"""
import functools
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
from time import perf_counter as _pc

from ... import _core
from ...engine import packets as _packets
from ...runtime import dtypes as _dtypes
from ...engine import tree
from ..._config import check_mode
from ...errors import MismatchError, PeerFailure
from ...runtime.group import resolve, tag_for
from . import low_latency as _low_latency
from .common import FLOAT_DTYPES, agree, empty_tensor, flag_bytes, wait_done

OP = _packets.WIN_DISPATCH
TRACE = None                # a list: (label, perf_counter) of the phases (profiling)


@dataclass
class DispatchHandle:
    """What combine (and a cached dispatch) needs to reverse or repeat a dispatch.

    Source side: ``node_offsets``/``node_tokens`` (tokens sent to each node, ascending),
    ``rank_offsets``/``rank_tokens`` (per-rank lists, unicast). Receive side: ``recv_src_rank`` and
    ``recv_src_token`` (int64 [R]: where each received row came from), ``recv_counts`` (int64 [P]:
    rows from each source), plus the node buffer layout used to reduce per node in combine.
    """

    group: object
    mode: str
    num_experts: int
    num_tokens: int
    num_topk: int
    hidden_bytes: int
    dtype: torch.dtype
    topk_idx: torch.Tensor
    topk_weights: torch.Tensor
    node_offsets: np.ndarray
    node_tokens: np.ndarray
    node_bitmaps: np.ndarray
    rank_offsets: np.ndarray
    rank_tokens: np.ndarray
    node_counts: np.ndarray          # [P, N]: records each source sends to each node
    rank_counts: np.ndarray          # [P, P]: rows each source sends to each rank
    recv_counts: np.ndarray          # [P]: rows this rank received from each source
    recv_src_rank: np.ndarray
    recv_src_token: np.ndarray
    local_recv_rows: np.ndarray      # [L]: rows each rank of this node received
    reduce_index: dict = field(default_factory=dict)   # source rank -> int64 [M, L] rows to sum
    recv_topk_idx: Optional[torch.Tensor] = None
    recv_topk_weights: Optional[torch.Tensor] = None
    num_recv_tokens_per_expert: Optional[List[int]] = None
    seq: int = -1                    # the dispatch call that made the layout (same on every rank)
    low_latency: int = 0             # rows per block when the low-latency path made it (low_latency.py), else 0

    @property
    def num_recv_tokens(self):
        return int(self.recv_counts.sum())


def _rank_to_node(topo):
    return np.asarray(topo.node_of, dtype=np.int64), np.asarray(topo.local_rank_of, dtype=np.int64)


def _check_inputs(g, x, topk_idx, topk_weights, num_experts):
    """Local validation; returns an error message or None (shared with every rank before raising)."""
    P = g.size
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        return f"x must be a 2-D tensor [num_tokens, hidden], got {getattr(x, 'shape', type(x))}"
    if x.dtype not in FLOAT_DTYPES:
        return f"x must be float32, float16 or bfloat16, got {x.dtype}"
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dtype != torch.int64 or topk_idx.dim() != 2:
        return f"topk_idx must be an int64 tensor [num_tokens, k], got {getattr(topk_idx, 'dtype', type(topk_idx))} " \
               f"{tuple(getattr(topk_idx, 'shape', ()))}"
    if topk_idx.shape[0] != x.shape[0]:
        return f"topk_idx has {topk_idx.shape[0]} rows but x has {x.shape[0]} tokens"
    if topk_weights is not None:
        if not isinstance(topk_weights, torch.Tensor) or topk_weights.dtype != torch.float32:
            return f"topk_weights must be a float32 tensor, got {getattr(topk_weights, 'dtype', type(topk_weights))}"
        if tuple(topk_weights.shape) != tuple(topk_idx.shape):
            return f"topk_weights has shape {tuple(topk_weights.shape)}, topk_idx has {tuple(topk_idx.shape)}"
    if int(num_experts) != num_experts or num_experts <= 0 or num_experts % P:
        return f"num_experts={num_experts} must be a positive multiple of the group size {P}"
    if topk_idx.numel():
        lo, hi = int(topk_idx.min()), int(topk_idx.max())
        if lo < -1 or hi >= num_experts:
            bad = lo if lo < -1 else hi
            return f"topk_idx holds expert id {bad}, outside [-1, {num_experts})"
    return None


_MODES = {"multiwrite": 0, "unicast": 1}
_META = ("row bytes", "k", "dtype", "num_experts", "mode")


def get_dispatch_layout(topk_idx, num_experts, group=None):
    """Where tokens go, without moving data (local, no communication).

    topk_idx: int64 [T, k], -1 = no expert. Returns ``(num_tokens_per_rank int64 [P],
    num_tokens_per_node int64 [N], num_tokens_per_expert int64 [E], is_token_in_rank bool [T, P])``.
    """
    g = resolve(group)
    if not isinstance(topk_idx, torch.Tensor) or topk_idx.dtype != torch.int64 or topk_idx.dim() != 2:
        raise TypeError("topk_idx must be an int64 tensor [num_tokens, k]")
    node_of, _ = _rank_to_node(g.topo)
    per_rank, per_node, per_expert, in_rank = _core.dispatch_layout(
        np.ascontiguousarray(topk_idx.numpy()), int(num_experts), node_of)
    return (torch.from_numpy(per_rank), torch.from_numpy(per_node), torch.from_numpy(per_expert),
            torch.from_numpy(in_rank))


def dispatch(x, topk_idx=None, topk_weights=None, num_experts=None, *, handle=None, group=None, mode=None):
    """Send every token to the ranks of its top-k experts.

    x: [T, H] float32 / float16 / bfloat16. topk_idx: int64 [T, k] (-1 = none). topk_weights: float32
    [T, k] (optional; zeros if None). num_experts: E, a multiple of the group size.
    With ``handle`` (from an earlier dispatch of the same routing): a cached dispatch that reuses its
    layout (topk_idx/topk_weights/num_experts are taken from the handle).
    Returns ``(recv_x [R, H] (x's dtype), recv_topk_idx int64 [R, k] (local expert ids or -1),
    recv_topk_weights float32 [R, k], num_recv_tokens_per_expert list[int] (E/P), handle)`` with rows
    ordered by (source rank, source token).
    """
    g = resolve(group)
    topo = g.topo
    if TRACE is not None: TRACE.append(("enter", _pc()))
    seq = g.next_seq()
    what = f"dispatch (call #{seq})"
    P, N = g.size, topo.num_nodes
    cached = handle is not None
    status = None
    if cached:
        if handle.group is not g:
            status = "the handle comes from another group"
        elif not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] != handle.num_tokens:
            status = f"x has shape {tuple(getattr(x, 'shape', ()))}, the handle was made for {handle.num_tokens} tokens"
        elif x.dtype not in FLOAT_DTYPES:
            status = f"x must be float32, float16 or bfloat16, got {x.dtype}"
        else:
            topk_idx, topk_weights, num_experts = handle.topk_idx, handle.topk_weights, handle.num_experts
            mode = handle.mode
    else:
        mode = g.mode if mode is None else check_mode(mode)
        status = _check_inputs(g, x, topk_idx, topk_weights, num_experts)
    if cached and handle.low_latency:
        cached = False          # its layout is not the normal path's: planned again from its routing
    if _low_latency.planned(g):
        result = _low_latency.dispatch(g, seq, what, x, topk_idx, topk_weights, num_experts, mode, status,
                                       DispatchHandle)
        if result is not None:
            return result
    k = topk_idx.shape[1] if status is None else 0
    row_bytes = x.shape[1] * x.element_size() if status is None else 0

    if status is None and not cached:
        node_of, local_of = _rank_to_node(topo)
        idx_np = np.ascontiguousarray(topk_idx.numpy())
        node_offsets, node_tokens, node_bitmaps = _core.plan_dispatch(idx_np, int(num_experts), node_of, local_of)
        rank_offsets, rank_tokens = _core.plan_dispatch_per_rank(idx_np, int(num_experts), P)
        if topk_weights is None:
            topk_weights = torch.zeros(topk_idx.shape, dtype=torch.float32)
        sent_nodes, sent_ranks = np.diff(node_offsets), np.diff(rank_offsets)
    elif status is None:
        node_offsets, node_tokens, node_bitmaps = handle.node_offsets, handle.node_tokens, handle.node_bitmaps
        rank_offsets, rank_tokens = handle.rank_offsets, handle.rank_tokens
        sent_nodes, sent_ranks = handle.node_counts[g.rank], handle.rank_counts[g.rank]
    ints = outgoing = None
    if status is None:
        meta = [row_bytes, k, _dtypes.code(str(x.dtype).replace("torch.", "")), int(num_experts), _MODES[mode]]
        ints = np.concatenate([np.asarray(meta + [x.shape[0]], dtype=np.int64), sent_nodes, sent_ranks])
        # What this rank sends depends only on its own routing: pack the first piece of every packet
        # now, so it leaves as soon as the agreement is done (the agreement waits on the network; on
        # a host with more ranks than cores, packing after it kept the link idle for milliseconds).
        outgoing = _Outgoing(g, x, topk_idx, topk_weights, row_bytes, k, mode == "unicast", node_offsets,
                             node_tokens, node_bitmaps, rank_offsets, rank_tokens, sent_ranks)
        if TRACE is not None: TRACE.append(("prepacked", _pc()))
    M = len(_META) + 1                  # the meta, then the token count (T may differ between ranks)
    try:
        table = agree(g, what, status, ints, M + N + P)
    except Exception:
        _low_latency.reset(g)
        raise
    if TRACE is not None: TRACE.append(("agreed", _pc()))
    metas = table[:, :len(_META)]
    if (metas != metas[0]).any():
        _low_latency.reset(g)
        raise MismatchError(f"{what}: ranks disagree on ({', '.join(_META)}): "
                            + ", ".join(f"rank {r}: {tuple(int(v) for v in m)}" for r, m in enumerate(metas)))
    _low_latency.agreed(g, metas[0, :4], table[:, len(_META)].max())
    node_counts = np.ascontiguousarray(table[:, M:M + N])     # [P, N]
    rank_counts = np.ascontiguousarray(table[:, M + N:])      # [P, P]
    unicast = mode == "unicast"

    rec = outgoing.rec

    # Node receive buffer: records from every source for this node, in source-rank order. In unicast
    # mode, remote sources' records for this rank go to a private buffer instead.
    node = topo.node
    node_in = node_counts[:, node].copy()
    if unicast:
        node_in[[s for s in range(P) if topo.node_of[s] != node]] = 0
    node_off = np.zeros(P + 1, dtype=np.int64)
    np.cumsum(node_in * rec, out=node_off[1:])
    window_id = OP + 256 * _dtypes.code(str(x.dtype).replace("torch.", ""))
    tag = tag_for(OP, seq)
    ready = (2 * seq) & 0xFFFFFFFF
    L, lr = topo.local_size, topo.local_rank

    # Remote nodes (or ranks) first, before touching the node buffer, so the link starts early.
    sends = outgoing.post_all(tag, window_id, seq)

    # Node buffer: u32 arrival words (one per source rank) and "done" words (one per local rank), then
    # the records. A source's arrival word counts the pieces of its records that are complete in the
    # buffer (packed by a local source, or received and checked by this node's relay), so every rank
    # unpacks each piece as soon as it is there. Its size follows from the global count table (equal
    # on every local rank, so all grow it together); instead of a node barrier, a rank only waits until
    # every local rank has finished reading the buffer in the previous dispatch (its done word) before
    # writing into it.
    if TRACE is not None: TRACE.append(("sends_posted", _pc()))
    fbytes = flag_bytes(P + L + 1)
    need = fbytes + int(node_off[-1])
    shared = g.node_buffer("dispatch_recv", need)
    wait_done(g, what, shared, 4 * P)
    routing = _Routing(x=x, topk_idx=topk_idx, topk_weights=topk_weights, num_experts=int(num_experts), k=k,
                       row_bytes=row_bytes, mode=mode, cached=cached, handle=handle, node_offsets=node_offsets,
                       node_tokens=node_tokens, node_bitmaps=node_bitmaps, rank_offsets=rank_offsets,
                       rank_tokens=rank_tokens, node_counts=node_counts, rank_counts=rank_counts)
    try:
        return _dispatch_recv(g, seq, what, routing, outgoing, sends, shared, node_off, node_in, tag, window_id)
    finally:
        _core.atomic_store_u32(shared, 4 * (P + lr), ready)


class _Outgoing:
    """This rank's packets to other nodes (MultiWrite: one per remote node, to its relay; unicast: one
    per remote rank), in pieces (``_packets.pieces``), packed into a private send buffer. Built from
    the local routing alone; the first piece of every packet is packed at construction."""

    def __init__(self, g, x, topk_idx, topk_weights, row_bytes, k, unicast, node_offsets, node_tokens,
                 node_bitmaps, rank_offsets, rank_tokens, sent_ranks):
        topo, T = g.topo, x.shape[0]
        self.g = g
        self.rec = rec = _core.record_size(row_bytes, k)
        self.x_bytes = x.detach().contiguous().view(torch.uint8).numpy().reshape(T, row_bytes) if T else \
            np.zeros((0, row_bytes), dtype=np.uint8)
        self.idx_np = np.ascontiguousarray(topk_idx.numpy())
        self.w_np = np.ascontiguousarray(topk_weights.detach().numpy())
        if unicast:
            units = [(d, rank_tokens[rank_offsets[d]:rank_offsets[d + 1]],
                      np.full(int(sent_ranks[d]), 1 << topo.local_rank_of[d], dtype=np.uint64))
                     for d in range(g.size) if topo.node_of[d] != topo.node and sent_ranks[d]]
        else:
            units = [(tree.spread(topo, g.rank, m), node_tokens[node_offsets[m]:node_offsets[m + 1]],
                      node_bitmaps[node_offsets[m]:node_offsets[m + 1]])
                     for m in range(topo.num_nodes) if m != topo.node and node_offsets[m + 1] > node_offsets[m]]
        send_buf = g.private_buffer("dispatch_send", sum(len(u[1]) for u in units) * rec)
        self.pieces = []            # per unit: [(dst, record buffer, tokens, bitmaps, first record)]
        pos = 0
        for dst, tokens, bitmaps in units:
            cuts = _packets.pieces(g, len(tokens), rec)
            self.pieces.append([(dst, send_buf[pos + a * rec:pos + b * rec], tokens[a:b], bitmaps[a:b], a)
                                for a, b in zip(cuts[:-1], cuts[1:])])
            pos += len(tokens) * rec
        for unit in self.pieces:
            self._pack(unit[0])

    def _pack(self, piece):
        _, part, tokens, bitmaps, _ = piece
        _core.pack_records(self.x_bytes, self.idx_np, self.w_np, tokens, bitmaps, part)

    def post_all(self, tag, window_id, seq):
        """Queue every piece on a PieceSender (the first ones leave at once) and return it. A piece
        after the first is packed when it is posted."""
        g, per = self.g, _packets.MAX_PIECES
        headers_out = _packets.header_buffers(g, "dispatch_hout", len(self.pieces) * per)
        sends = _packets.PieceSender(g)

        def post(header, piece, packed):
            if not packed:
                self._pack(piece)
            dst, part, _, bitmaps, first = piece
            bitmap_all = int(np.bitwise_or.reduce(bitmaps)) if len(bitmaps) else 0
            return _packets.send(g, header, part, dst, tag, window_id=window_id, seq=seq,
                                 dest_bitmap=bitmap_all, offset=first * self.rec)

        for u, unit in enumerate(self.pieces):
            for i, piece in enumerate(unit):
                sends.add(piece[0], functools.partial(post, headers_out[u * per + i], piece, i == 0))
        return sends


@dataclass
class _Routing:
    """One dispatch call's inputs and routing: this rank's plan (by node and by rank) and every rank's
    agreed counts (node_counts [P, N], rank_counts [P, P])."""
    x: torch.Tensor
    topk_idx: torch.Tensor
    topk_weights: torch.Tensor
    num_experts: int
    k: int
    row_bytes: int
    mode: str
    cached: bool
    handle: Optional[DispatchHandle]
    node_offsets: np.ndarray
    node_tokens: np.ndarray
    node_bitmaps: np.ndarray
    rank_offsets: np.ndarray
    rank_tokens: np.ndarray
    node_counts: np.ndarray
    rank_counts: np.ndarray


def _dispatch_recv(g, seq, what, routing, outgoing, sends, shared, node_off, node_in, tag, window_id):
    """The receiving half of a dispatch: land and check the packets this rank relays, unpack this rank's
    rows from every source's records as they arrive, and build the handle. ``shared``: the node buffer
    (arrival words, then the records at ``node_off`` per source); ``outgoing``/``sends``: this rank's
    packets, still in flight."""
    topo = g.topo
    P, L, lr, node = g.size, topo.local_size, topo.local_rank, topo.node
    x, k, row_bytes, num_experts = routing.x, routing.k, routing.row_bytes, routing.num_experts
    topk_idx, topk_weights, cached, handle, mode = (routing.topk_idx, routing.topk_weights, routing.cached,
                                                    routing.handle, routing.mode)
    node_offsets, node_tokens, node_bitmaps = routing.node_offsets, routing.node_tokens, routing.node_bitmaps
    rank_offsets, rank_tokens = routing.rank_offsets, routing.rank_tokens
    node_counts, rank_counts = routing.node_counts, routing.rank_counts
    unicast, T = mode == "unicast", x.shape[0]
    rec, x_bytes, idx_np, w_np = outgoing.rec, outgoing.x_bytes, outgoing.idx_np, outgoing.w_np
    node_buf = shared[flag_bytes(P + L + 1):]
    local_src = [s for s in range(P) if topo.node_of[s] == node]
    recvs = {}                       # source -> receives of its pieces (the packets this rank receives)
    per = _packets.MAX_PIECES
    headers_in = _packets.header_buffers(g, "dispatch_hin", P * per)
    remote = [s for s in range(P) if topo.node_of[s] != node]
    base = _arrival_base(seq)

    def receive(s, buf, records):
        cuts = _packets.pieces(g, records, rec)
        recvs[s] = [_packets.PacketRecv(g, headers_in[s * per + i], buf[cuts[i] * rec:cuts[i + 1] * rec], s, tag,
                                        what) for i in range(len(cuts) - 1)]

    if unicast:
        uni_in = rank_counts[:, g.rank] * rec
        uni_in[local_src] = 0
        uni_off = np.zeros(P + 1, dtype=np.int64)
        np.cumsum(uni_in, out=uni_off[1:])
        uni_buf = g.private_buffer("dispatch_unicast_recv", int(uni_off[-1]))
        for s in remote:
            if rank_counts[s, g.rank]:
                receive(s, uni_buf[uni_off[s]:uni_off[s + 1]], int(rank_counts[s, g.rank]))
    else:
        for s in remote:
            if node_counts[s, node] and tree.spread(topo, s, node) == g.rank:
                receive(s, node_buf[node_off[s]:node_off[s + 1]], int(node_counts[s, node]))

    # Own node: straight into shared memory (one piece), then flag it.
    mine = slice(node_offsets[node], node_offsets[node + 1])
    if node_counts[g.rank, node]:
        _core.pack_records(x_bytes, idx_np, w_np, node_tokens[mine], node_bitmaps[mine],
                           node_buf[node_off[g.rank]:node_off[g.rank + 1]])
        g.stats.add_intra(int(node_counts[g.rank, node]) * rec)
    _publish(shared, g.rank, base + 1, 4 * (P + L))
    if TRACE is not None: TRACE.append(("own_packed", _pc()))

    # Unpack my rows from every source's region, piece by piece as it arrives (rows from source s go
    # to a range known from the count table), while receiving and checking the packets this rank
    # relays. Pieces: remote sources' records as they were sent, a local source's in one.
    regions = []
    for s in range(P):
        if node_in[s]:
            regions.append((s, node_buf[node_off[s]:node_off[s + 1]]))
        elif unicast and s in remote and rank_counts[s, g.rank]:
            regions.append((s, uni_buf[uni_off[s]:uni_off[s + 1]]))
    cuts_of = {s: (_packets.pieces(g, len(buf) // rec, rec) if s in remote else [0, len(buf) // rec])
               for s, buf in regions}
    recv_counts = np.ascontiguousarray(rank_counts[:, g.rank]).copy()
    has_region = {s for s, _ in regions}
    recv_counts[[s for s in range(P) if s not in has_region]] = 0
    row_start = np.zeros(P + 1, dtype=np.int64)
    np.cumsum(recv_counts, out=row_start[1:])
    R = int(row_start[-1])
    H = x.shape[1]
    recv_x = empty_tensor((R, H), x.dtype)
    recv_idx = torch.empty((R, k), dtype=torch.int64)
    recv_w = torch.empty((R, k), dtype=torch.float32)
    src_token = np.empty(R, dtype=np.int64)
    rx = recv_x.view(torch.uint8).numpy().reshape(R, row_bytes)
    ri, rw = recv_idx.numpy(), recv_w.numpy()
    experts_per_rank = num_experts // P
    lo = g.rank * experts_per_rank
    fan = {}
    cursor = row_start[:-1].copy()          # next row of each source's range

    def unpack(s, i, buf):
        piece = buf[cuts_of[s][i] * rec:cuts_of[s][i + 1] * rec]
        counts = _core.fanout_counts(piece, row_bytes, k, L)
        a = int(cursor[s])
        b = a + int(counts[lr])
        if b > row_start[s + 1]:
            raise MismatchError(f"{what}: rank {s} sent more rows for rank {g.rank} than the count table's "
                                f"{int(recv_counts[s])}")
        n = _core.unpack_records(piece, row_bytes, k, lr, lo, lo + experts_per_rank, rx[a:b], src_token[a:b],
                                 ri[a:b], rw[a:b], 0)
        assert n == b - a
        cursor[s] = b
        fan[s] = fan[s] + counts if s in fan else counts

    def check(s, i):
        _packets.check_piece(headers_in[s * per + i], what=what, window_id=window_id, seq=seq, src_rank=s,
                             window_size=int(cuts_of[s][-1]) * rec, num_local_ranks=L,
                             payload_len=int(recvs[s][i].payload.nbytes), offset=int(cuts_of[s][i]) * rec)

    relayed = [] if unicast else list(recvs)
    error = _exchange(g, what, shared, 4 * (P + L), base, regions, cuts_of, recvs, check, unpack, relayed, sends)
    if TRACE is not None: TRACE.append(("exchanged", _pc()))
    if error is None:
        short = [s for s, _ in regions if cursor[s] != row_start[s + 1]]
        if short:
            error = MismatchError(f"{what}: rank(s) {short} sent fewer rows for rank {g.rank} than the count table")
    error = _packets.finish_sends(g, what, sends, error)
    if error is not None:
        raise error
    src_rank = np.repeat(np.arange(P, dtype=np.int64), recv_counts)
    per_expert = torch.bincount(recv_idx[recv_idx >= 0], minlength=experts_per_rank).tolist() \
        if R else [0] * experts_per_rank

    # Layout for combine: rows each local rank holds, and for the sources whose node partial sums
    # this rank computes (remote sources it relays, and itself), which rows to add per record.
    local_rows = np.zeros(L, dtype=np.int64)
    for counts in fan.values():
        local_rows += counts
    if unicast:
        # Remote sources' rows are private to each rank: only own-node records are reduced per node.
        local_rows = np.zeros(L, dtype=np.int64)
        for s, buf in regions:
            if topo.node_of[s] == node:
                local_rows += fan[s]
    reduce_index = _reduce_index(g, regions, fan, local_rows, unicast, rec)
    if cached:
        new = handle
        new.recv_counts = recv_counts
        new.recv_src_rank, new.recv_src_token = src_rank, src_token
    else:
        new = DispatchHandle(
            group=g, mode=mode, num_experts=int(num_experts), num_tokens=T, num_topk=k, hidden_bytes=row_bytes,
            dtype=x.dtype, topk_idx=topk_idx, topk_weights=topk_weights, node_offsets=node_offsets,
            node_tokens=node_tokens, node_bitmaps=node_bitmaps, rank_offsets=rank_offsets,
            rank_tokens=rank_tokens, node_counts=node_counts, rank_counts=rank_counts, recv_counts=recv_counts,
            recv_src_rank=src_rank, recv_src_token=src_token, local_recv_rows=local_rows,
            reduce_index=reduce_index, recv_topk_idx=recv_idx, recv_topk_weights=recv_w,
            num_recv_tokens_per_expert=per_expert, seq=seq)
    return recv_x, recv_idx, recv_w, per_expert, new


_FAILED = 15                 # an arrival word at base + _FAILED: the rank that fills the region failed
_TIMED_OUT = 14              # ... at base + _TIMED_OUT: it timed out waiting for the region's records
_PEER_GONE = 13              # ... at base + _PEER_GONE: the region's sender is gone (PeerFailure)


def _arrival_base(seq):
    """Arrival words of dispatch call ``seq`` hold base + pieces landed (or base + _FAILED). Bases of
    consecutive calls are 16 apart, so a word left by an earlier call reads as nothing landed."""
    return (16 * seq) & 0xFFFFFFFF


def _arrived(word, base):
    """Pieces landed according to an arrival word; -1 if its region failed, -2 if the rank filling
    it timed out (pieces per region stay below _TIMED_OUT: _packets.MAX_PIECES)."""
    d = (int(word) - base) & 0xFFFFFFFF
    return -1 if d == _FAILED else -2 if d == _TIMED_OUT else -3 if d == _PEER_GONE else d if d < 16 else 0


def _exchange(g, what, shared, bell, base, regions, cuts_of, recvs, check, process, relayed, sends=None):
    """Drive the receives of this rank and process the pieces of every region as they become complete.

    regions: [(source, buf)]; cuts_of: source -> record cuts of its pieces. recvs: source -> the
    receives of its pieces at this rank (a piece is complete when its receive completes and
    ``check(source, i)`` passes). Other regions' pieces are complete as far as their arrival word (u32
    at ``4 * source`` of ``shared``, see _arrived) says; for sources in ``relayed`` this rank publishes
    that word and rings the bell (u32 at ``bell``: counts every publication, the one word a waiting
    rank sleeps on). ``process(source, i, buf)`` runs for every piece, in order. Every receive of this rank
    completes before returning (or a timeout is raised, after flagging the relayed regions as failed);
    returns the first error (or None). ``sends``: this rank's PieceSender, pumped along the way (MPI
    moves a large message only while its sender calls into MPI: a rank that only slept on node words
    would stall the relay waiting for its packet; and queued pieces are posted as room frees up).
    """
    import time
    from ...errors import MultiwriteError, MultiwriteTimeout
    topo = g.topo
    error = None
    bufs = dict(regions)
    done = {s: 0 for s in bufs}                 # pieces processed
    landed = {s: 0 for s in recvs}              # pieces received and checked here
    pending = list(bufs)
    pending_recv = [s for s in recvs if recvs[s]]
    broken = set()
    deadline = time.monotonic() + g.timeout_s
    spin_until = time.monotonic() + 5e-5
    sleep = 0.0
    relayed = set(relayed)
    # Gloo's requests only complete inside wait(): there, block on one receive whenever no piece could
    # be processed, and leave the sends to finish_sends (MPI requests are polled).
    pollable = g.transport.completes_in_test
    sending = pollable and sends is not None

    def fail(exc):
        nonlocal error
        if error is None:
            error = exc

    def give_up():
        for r in relayed:
            if landed[r] < len(recvs[r]):
                _publish(shared, r, base + _TIMED_OUT, bell)

    while pending_recv or pending:
        progressed = False
        rung = _core.atomic_load_u32(shared, bell)
        if sending:
            try:
                sending = sends.pump()
            except Exception:        # reported by _packets.finish_sends, which waits for them again
                sending = False
        still = []
        for s in pending:
            if s in recvs:
                avail = -1 if s in broken else landed[s]
            else:
                avail = _arrived(_core.atomic_load_u32(shared, 4 * s), base)
                if avail < 0:
                    filler = tree.spread(topo, s, topo.node) if topo.node_of[s] != topo.node else s
                    # a relay's timeout is this rank's too (the records will not come): same class
                    fail(MultiwriteTimeout(f"{what}: rank {filler} of this node timed out after {g.timeout_s:g}s "
                                           f"waiting for the records of rank {s} (a peer died, hangs, or did not "
                                           f"call the same operation)") if avail == -2 else
                         PeerFailure(f"{what}: rank {s} is gone (its connection to rank {filler} of this node "
                                     f"broke)", rank=s) if avail == -3 else
                         MismatchError(f"{what}: rank {filler} of this node failed to deliver the records of rank {s}"))
            if avail < 0:
                progressed = True
                continue
            while done[s] < avail:
                if error is None:
                    try:
                        process(s, done[s], bufs[s])
                    except Exception as exc:
                        fail(exc)
                done[s] += 1
                progressed = True
            if done[s] < len(cuts_of[s]) - 1:
                still.append(s)
        pending = still
        for s in list(pending_recv):
            i = landed[s]
            try:
                if pollable:
                    if not recvs[s][i].test(max(deadline - time.monotonic(), 1e-3), what):
                        continue
                elif progressed:
                    break
                recvs[s][i].wait(max(deadline - time.monotonic(), 1e-3), what)
                check(s, i)
                if TRACE is not None: TRACE.append(("recv", _pc()))
                landed[s] += 1
                state = base + landed[s]
                if landed[s] == len(recvs[s]):
                    pending_recv.remove(s)
            except MultiwriteTimeout:
                give_up()
                raise
            except MultiwriteError as exc:
                pending_recv.remove(s)
                broken.add(s)
                fail(exc)
                state = base + (_PEER_GONE if isinstance(exc, PeerFailure) else _FAILED)
            except Exception as exc:  # MPI truncation, Gloo size errors, corrupt headers
                pending_recv.remove(s)
                broken.add(s)
                fail(MismatchError(f"{what}: a peer's message does not fit what this rank expects "
                                   f"(sizes differ across ranks?): {exc}"))
                state = base + _FAILED
            if s in relayed:
                _publish(shared, s, state, bell)
            progressed = True
            if not pollable:
                break
        if not (pending_recv or pending):
            break
        now = time.monotonic()
        if now > deadline:
            give_up()
            missing = sorted(set(pending_recv) | set(pending))
            raise MultiwriteTimeout(f"{what}: timed out after {g.timeout_s:g}s waiting for the records of "
                                    f"rank(s) {missing} (a peer died, hangs, or did not call the same "
                                    f"operation; MULTIWRITE_TIMEOUT sets the limit)")
        if progressed:
            sleep = 0.0
            spin_until = now + 5e-5
        elif now > spin_until:
            if (not pending_recv or not pollable) and any(s not in recvs for s in pending):
                # Only node peers' words left: sleep until any of them changes (futex on the bell),
                # briefly while own sends are pending: they need this rank's MPI calls to move.
                _core.wait_u32_ge(shared, bell, (rung + 1) & 0xFFFFFFFF,
                                  min(max(deadline - now, 1e-3), 5e-5 if sending else 0.05))
            else:
                sleep = min(max(sleep * 2, 1e-5), 2e-4)
                time.sleep(sleep)
    return error


def _publish(shared, source, value, bell):
    """Set a source's arrival word and ring the node's bell (the u32 at byte offset ``bell``)."""
    _core.atomic_store_u32(shared, 4 * source, value & 0xFFFFFFFF)
    _core.atomic_add_u32(shared, bell, 1, wake=True)


def _reduce_index(g, regions, fan, local_rows, unicast, rec):
    """For every source whose per-node partial sum this rank will compute in combine: int64 [M, L],
    the row (in the node's combine staging: local ranks' outputs stacked in local-rank order) of each
    record's copy at each local rank, or -1."""
    topo = g.topo
    node = topo.node
    L = topo.local_size
    base = np.zeros(L, dtype=np.int64)
    np.cumsum(local_rows[:-1], out=base[1:])
    start = np.zeros(L, dtype=np.int64)      # next row of each local rank, walking sources in order
    index = {}
    for s, buf in regions:
        if unicast and topo.node_of[s] != node:
            continue    # rows private to this rank: combine sends them back as they are
        counts = fan[s]
        computes = (s == g.rank) if topo.node_of[s] == node else (tree.spread(topo, s, node) == g.rank)
        if computes:
            bitmaps = np.ascontiguousarray(buf.reshape(-1, rec)[:, 8:16]).view(np.uint64).ravel()
            pos = _core.fanout_positions(bitmaps, L)
            index[s] = np.where(pos >= 0, pos + start + base, -1)
        start += counts
    return index
