"""Low-latency MoE dispatch and combine for decode-sized calls: one network round each, no agreement first.

The normal dispatch first agrees on every rank's counts (a control allgather, one network round trip)
and then sends the rows (a second); its combine agrees on the call first too. At decode sizes (a few
tokens per rank) those round trips are the whole cost. Here:

* **dispatch**: every rank puts a fixed-size *block* -- a 64-byte header, then C rows, their expert
  ids and their weights, unused rows left as they are -- into one MultiWrite AllGather (one copy per
  remote node, replicated through the node's shared memory; ops/allgather.py), and picks its own rows
  out of the gathered blocks: every row of a source token that chose one of its experts, in (source
  rank, token) order, exactly the normal path's output.
* **combine**: every rank sends each source rank the expert outputs of that source's tokens (its rows
  are already grouped by source) in one AlltoAll (ops/alltoall.py: packets between nodes, shared
  memory inside a node) whose split sizes every rank reads from the dispatch's routing table, so no
  round compares them first; the AlltoAll's key is the dispatch's call number, so ranks that pass
  handles of different dispatches get a MismatchError. The source sums what it gets as the normal
  path does, bit for bit: per node in rank order (float32, rounded to y's dtype), then over the nodes
  in node order (float32, rounded once).

**Capacity C** (rows per block): every rank must know the block size without asking, so C comes from
what every rank saw identically in the group's previous dispatch: the largest token count of any rank,
rounded up to a power of two, at most MULTIWRITE_DECODE_TOKENS (default 1 under the MPI transport, 0 =
off under the Gloo transport, where this combine is slower than the normal one).
The group's first dispatch, and every dispatch after one with more tokens than that, runs the normal
path, whose agreement gives the next C. A rank whose call does not fit the blocks (more than C tokens,
another hidden size, dtype, k or expert count, unicast mode, or arguments that fail its local checks)
sends a header that says so; every rank sees it in the same gathered headers and the call continues on
the normal path, whose agreement then reports bad arguments on every rank. So the path is used
automatically from the second decode step on, and a call that does not fit costs one extra small
AllGather.

Bytes: dispatch's blocks cross each remote node's link once, with C rows whether or not the tokens
chose an expert there (with top-8 of 64 experts on 2-4 nodes nearly every token does) and up to 2 x
padding when T is not a power of two; combine returns one row per (token, destination rank), not one
partial sum per (token, node) -- at decode sizes the round trips, not the bytes, set the time.
"""
import numpy as np
import torch

from ... import _config, _core
from ...runtime import dtypes as _dtypes
from ...errors import MismatchError, MultiwriteError
from ..allgather import all_gather_bytes
from ..alltoall import all_to_all_bytes
from .common import empty_tensor

_FLOAT = (torch.float32, torch.float16, torch.bfloat16)
_HEADER = 64                 # bytes: int64 [status, T, row bytes, k, dtype code, E, C, 0]
_REFUSED = 1                 # status: this rank's call does not fit the blocks (normal path for everyone)
_KEYS = (1 << 14) - 1        # combine's AlltoAll key: the dispatch's call number modulo this, and
_FAILED_KEY = _KEYS          # the key of a rank whose arguments failed its checks (no handle has it)


class _State:
    """Per group, the same on every rank: the capacity of the next dispatch (0: the normal path) and
    the (row bytes, k, dtype code, E) it was set for; ``last``: the capacity of the last dispatch if it
    ran here, else 0 (a combine whose handle is unusable on one rank takes the same path as the others)."""

    def __init__(self, transport_name):
        self.limit = _config.decode_tokens(transport_name)
        self.capacity = 0
        self.meta = None
        self.last = 0


def _state(g):
    return g.extension("moe.low_latency", lambda: _State(g.transport.name))


def _capacity(limit, t_max):
    """C for a largest token count ``t_max``: the next power of two, at most ``limit``; 0 above it."""
    if limit <= 0 or t_max > limit:
        return 0
    c = 1
    while c < t_max:
        c *= 2
    return min(c, limit)


def planned(g):
    """True when the group's next dispatch starts on this path (the same answer on every rank)."""
    return _state(g).capacity > 0


def agreed(g, meta, t_max):
    """After a normal dispatch's agreement: the next dispatch's capacity from what every rank agreed on
    (``meta``: row bytes, k, dtype code, E; ``t_max``: the largest token count)."""
    st = _state(g)
    st.meta = tuple(int(v) for v in meta)
    # whatever the mode: a unicast call refuses the blocks, the multiwrite calls around it use them
    st.capacity = _capacity(st.limit, int(t_max))
    st.last = 0


def reset(g):
    """After a failed dispatch: the next one agrees first (every rank raised, so every rank resets)."""
    st = _state(g)
    st.capacity, st.meta, st.last = 0, None, 0


class _Layout:
    """Byte offsets of one block: header, C rows, C x k int64 expert ids, C x k float32 weights."""

    def __init__(self, C, row_bytes, k):
        self.C, self.row_bytes, self.k = C, row_bytes, k
        self.x = _HEADER
        self.idx = (self.x + C * row_bytes + 7) // 8 * 8
        self.w = self.idx + 8 * C * k
        self.nbytes = (self.w + 4 * C * k + 63) // 64 * 64


def dispatch(g, seq, what, x, topk_idx, topk_weights, num_experts, mode, status, handle_cls):
    """The dispatch of call ``seq`` on this path, or None when a rank's call did not fit (every rank
    returns None together; the caller continues on the normal path). Arguments as dispatch's; ``status``:
    this rank's local argument error or None. Returns dispatch's 5-tuple."""
    st = _state(g)
    C = st.capacity
    row_bytes, k, code, E = st.meta
    P, N = g.size, g.topo.num_nodes
    lay = _Layout(C, row_bytes, k)
    T = x.shape[0] if status is None else 0
    fits = status is None and mode == "multiwrite" and T <= C and (
        x.shape[1] * x.element_size(), topk_idx.shape[1], _dtypes.code(str(x.dtype).replace("torch.", "")),
        int(num_experts)) == st.meta
    block = g.private_buffer("moe_ll_block", lay.nbytes)
    block[:_HEADER].view(np.int64)[:] = (0 if fits else _REFUSED, T if fits else 0, row_bytes, k, code, E, C, 0)
    if fits and T:
        block[lay.x:lay.x + T * row_bytes] = x.detach().contiguous().view(torch.uint8).numpy().reshape(-1)
        block[lay.idx:lay.idx + 8 * T * k].view(np.int64)[:] = topk_idx.detach().contiguous().numpy().reshape(-1)
        w = block[lay.w:lay.w + 4 * T * k].view(np.float32)
        if topk_weights is None:
            w[:] = 0
        else:
            w[:] = topk_weights.detach().to(torch.float32).contiguous().numpy().reshape(-1)
    gathered = g.private_buffer("moe_ll_gathered", P * lay.nbytes)
    try:
        all_gather_bytes(g, gathered, block)
    except MultiwriteError:
        reset(g)
        raise
    blocks = gathered.reshape(P, lay.nbytes)
    heads = np.ascontiguousarray(blocks[:, :_HEADER]).view(np.int64)        # [P, 8]
    if heads[:, 0].any():
        st.capacity, st.last = 0, 0       # the normal path's agreement sets the next capacity
        return None
    expected = np.array([row_bytes, k, code, E, C], dtype=np.int64)
    Ts = heads[:, 1]
    if (heads[:, 2:7] != expected).any() or (Ts < 0).any() or (Ts > C).any():
        reset(g)
        bad = [r for r in range(P) if (heads[r, 2:7] != expected).any() or not 0 <= heads[r, 1] <= C]
        raise MismatchError(f"{what}: rank(s) {bad} sent a low-latency block of another layout (T, row bytes, k, "
                            f"dtype, E, capacity) = {[tuple(int(v) for v in heads[r, 1:7]) for r in bad]}, this rank "
                            f"expects ({row_bytes}, {k}, {code}, {E}, {C}) with T <= {C}")
    idx_all = np.ascontiguousarray(blocks[:, lay.idx:lay.idx + 8 * C * k]).view(np.int64).reshape(P, C, k)
    valid = np.arange(C)[None, :] < Ts[:, None]                              # [P, C]
    chosen = (idx_all >= 0) & valid[:, :, None]
    if (idx_all[chosen] >= E).any() or (idx_all[valid[:, :, None].repeat(k, 2)] < -1).any():
        reset(g)
        raise MismatchError(f"{what}: a gathered low-latency block holds expert ids outside [-1, {E}) (corrupt block)")
    epr = E // P
    lo = g.rank * epr
    local = chosen & (idx_all >= lo) & (idx_all < lo + epr)
    take = local.any(axis=2)                                                 # [P, C]
    sel = np.flatnonzero(take)                                               # (source rank, token) order
    src_rank, src_token = sel // C, sel % C
    R = sel.size
    H = x.shape[1]                        # this rank did not refuse: its arguments passed the checks
    recv_x = empty_tensor((R, H), x.dtype)
    if R:
        rows = blocks[:, lay.x:lay.x + C * row_bytes].reshape(P, C, row_bytes)
        recv_x.view(torch.uint8).numpy().reshape(R, row_bytes)[:] = rows[src_rank, src_token]
    recv_idx = torch.from_numpy(np.where(local, idx_all - lo, -1)[src_rank, src_token].reshape(R, k))
    w_all = np.ascontiguousarray(blocks[:, lay.w:lay.w + 4 * C * k]).view(np.float32).reshape(P, C, k)
    recv_w = torch.from_numpy(np.ascontiguousarray(w_all[src_rank, src_token]).reshape(R, k))
    per_expert = torch.bincount(recv_idx[recv_idx >= 0], minlength=epr).tolist() if R else [0] * epr

    # the whole routing table, as the normal path's handle has it: rows each source sends each rank/node
    hit = np.zeros((P, C, P), dtype=bool)
    s_i, t_i, j_i = np.nonzero(chosen)
    hit[s_i, t_i, idx_all[s_i, t_i, j_i] // epr] = True
    rank_counts = hit.sum(axis=1).astype(np.int64)
    node_of = np.asarray(g.topo.node_of, dtype=np.int64)
    node_hit = np.zeros((P, C, N), dtype=bool)
    for r in range(P):
        node_hit[:, :, node_of[r]] |= hit[:, :, r]
    node_counts = node_hit.sum(axis=1).astype(np.int64)
    recv_counts = take.sum(axis=1).astype(np.int64)
    empty = np.zeros(0, dtype=np.int64)
    # combine's sums (see combine): rows of my tokens come back from rank d in token order, after
    # those from ranks < d; per node the rows of its ranks in rank order, then the node partials
    mine = hit[g.rank, :T]                                                   # [T, P]
    back = rank_counts[g.rank]
    row_of = np.where(mine, np.cumsum(mine, axis=0) - 1 + np.concatenate([[0], np.cumsum(back)[:-1]])[None, :], -1)
    per_node = [np.ascontiguousarray(row_of[:, g.topo.node_ranks[m]]) for m in range(N)]
    final = np.arange(N, dtype=np.int64)[None, :] * T + np.arange(T, dtype=np.int64)[:, None]
    final[~np.stack([ix.max(axis=1, initial=-1) >= 0 for ix in per_node], axis=1)] = -1
    combine_index = {"per_node": per_node, "final": np.ascontiguousarray(final)}
    handle = handle_cls(
        group=g, mode=mode, num_experts=E, num_tokens=T, num_topk=k, hidden_bytes=row_bytes, dtype=x.dtype,
        topk_idx=topk_idx, topk_weights=(topk_weights if topk_weights is not None
                                         else torch.zeros(topk_idx.shape, dtype=torch.float32)),
        node_offsets=empty, node_tokens=empty, node_bitmaps=empty, rank_offsets=empty, rank_tokens=empty,
        node_counts=node_counts, rank_counts=rank_counts, recv_counts=recv_counts,
        recv_src_rank=src_rank.astype(np.int64), recv_src_token=src_token.astype(np.int64),
        local_recv_rows=empty, reduce_index=combine_index, recv_topk_idx=recv_idx, recv_topk_weights=recv_w,
        num_recv_tokens_per_expert=per_expert, seq=seq, low_latency=C)
    st.capacity = _capacity(st.limit, int(Ts.max()) if P else 0)
    st.last = C
    return recv_x, recv_idx, recv_w, per_expert, handle


def combine_capacity(g, handle):
    """The capacity of the combine's path: the handle's (0 for a normal dispatch's), or for a handle
    that is not of this group the last dispatch's (so that this rank joins the others and fails with
    them)."""
    if handle is not None and getattr(handle, "group", None) is g:
        return int(getattr(handle, "low_latency", 0))
    return _state(g).last


def combine(g, what, y, handle, status, C):
    """Combine on this path (see the module doc): returns [T, H] of y's dtype. ``status``: this rank's
    local argument error or None; every rank raises when one has one."""
    topo = g.topo
    P, me = g.size, g.rank
    if status is not None:
        # Join the exchange under a key no handle has, so that no rank waits for this one: the chunk
        # sizes the others expect (from the handle, when it is usable), else header-only chunks. They
        # raise MismatchError, this rank its own error.
        send = recv = [0] * P
        if handle is not None and getattr(handle, "group", None) is g:
            dt = y.dtype if isinstance(y, torch.Tensor) and y.dtype in _FLOAT else handle.dtype
            H = y.shape[1] if isinstance(y, torch.Tensor) and y.dim() == 2 else \
                handle.hidden_bytes // torch.empty((), dtype=handle.dtype).element_size()
            rb = H * torch.empty((), dtype=dt).element_size()
            send = [int(n) * rb for n in handle.recv_counts]
            recv = [int(n) * rb for n in handle.rank_counts[me]]
        try:
            all_to_all_bytes(g, np.zeros(sum(recv), dtype=np.uint8), np.zeros(sum(send), dtype=np.uint8), send, recv,
                             dtype="uint8", same_table=True, key=_FAILED_KEY)
        except MultiwriteError:
            pass
        raise ValueError(f"{what}: {status}")
    H, T, dtype = y.shape[1], handle.num_tokens, y.dtype
    esize = y.element_size()
    rb = H * esize
    # what I send rank s: my rows of s's tokens (y is in source order); what I get from rank d: the rows
    # of my tokens that went to d, in token order (both from the dispatch's routing table)
    send = [int(n) * rb for n in handle.recv_counts]
    from_rank = handle.rank_counts[me]
    recv = [int(n) * rb for n in from_rank]
    rows = empty_tensor((int(from_rank.sum()), H), dtype)
    src = y.detach().contiguous().view(torch.uint8).numpy().reshape(-1)
    all_to_all_bytes(g, rows.view(torch.uint8).numpy().reshape(-1), src, send, recv, dtype=str(dtype)[6:],
                     same_table=True, key=handle.seq % _KEYS)
    # The normal path's sums, bit for bit: per node in rank order (float32, rounded to y's dtype once),
    # then over the nodes in node order (float32, rounded once); the indices come from dispatch.
    ix = handle.reduce_index
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}[dtype]
    stage = rows.view(torch.uint8).numpy().view(np_dtype).reshape(-1, H)
    N = topo.num_nodes
    partials = np.empty((N * T, H), dtype=np_dtype)
    for m in range(N):
        _core.gather_reduce(stage, ix["per_node"][m], partials[m * T:(m + 1) * T])
    out = empty_tensor((T, H), dtype)
    _core.gather_reduce(partials, ix["final"], out.view(torch.uint8).numpy().view(np_dtype).reshape(T, H))
    return out
