"""MoE combine on MultiWrite: the reverse of dispatch with a partial reduction per node.

Every rank holds expert outputs for the rows it received in dispatch. MultiWrite mode: the ranks of a
node write their rows into the node's shared staging buffer; for each source token the rows of all
ranks of the node are summed there (C++ core, float32 accumulation, fixed order) and one row per
(token, node) crosses the network back to the source, which sums across nodes in node order.
Unicast mode: one row per (token, destination rank) returns and the source sums over ranks.
Results are bitwise deterministic from run to run; float32 results of the two modes agree to ~1e-6.
"""
import numpy as np
import torch
from time import perf_counter as _pc

from . import _core, _dtypes, _packets
from .dispatch import _FLOAT_DTYPES, _agree
from .errors import MismatchError
from .group import resolve, tag_for

OP = _packets.WIN_COMBINE
TRACE = None                # a list: (label, perf_counter) of the phases (profiling)


def _typed(buf, dtype, rows, hidden):
    """View raw bytes as the array type the C++ reduction takes (bfloat16 as uint16)."""
    np_dtype = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}[dtype]
    return buf[:rows * hidden * np.dtype(np_dtype).itemsize].view(np_dtype).reshape(rows, hidden)


def combine(y, handle, *, group=None):
    """Return expert outputs to the source ranks and sum them per token.

    y: [R, H'] float32 / float16 / bfloat16, one row per row that ``dispatch`` delivered to this rank
    (same order). handle: the DispatchHandle of that dispatch. Returns [T, H'] of y's dtype on the
    source rank: for token t the sum of the rows returned for it (0 for tokens sent nowhere).
    Weighting by topk_weights is the caller's job (as in DeepEP).
    """
    g = resolve(group)
    if TRACE is not None: TRACE.append(("enter", _pc()))
    topo = g.topo
    P, N, L, lr, node = g.size, topo.num_nodes, topo.local_size, topo.local_rank, topo.node
    seq = g.next_seq()
    what = f"combine (call #{seq})"
    status = None
    if handle is None or getattr(handle, "group", None) is not g:
        status = "the handle comes from another group" if handle is not None else "handle is None"
    elif not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != handle.num_recv_tokens:
        status = (f"y has shape {tuple(getattr(y, 'shape', ()))}, the handle delivered "
                  f"{handle.num_recv_tokens} rows to this rank")
    elif y.dtype not in _FLOAT_DTYPES:
        status = f"y must be float32, float16 or bfloat16, got {y.dtype}"
    ints = [int(y.shape[1]), _dtypes.code(str(y.dtype).replace("torch.", ""))] if status is None else None
    table = _agree(g, what, status, ints, 2)
    if TRACE is not None: TRACE.append(("agreed", _pc()))
    if (table != table[0]).any():
        raise MismatchError(f"{what}: ranks disagree on (hidden, dtype code): "
                            + ", ".join(f"rank {r}: {tuple(int(v) for v in m)}" for r, m in enumerate(table)))
    H, dtype = y.shape[1], y.dtype
    rb = H * y.element_size()
    unicast = handle.mode == "unicast"
    T = handle.num_tokens
    y_bytes = y.detach().contiguous().view(torch.uint8).numpy().reshape(-1, rb) if y.numel() else \
        np.zeros((y.shape[0], rb), dtype=np.uint8)

    # 1. Stage this node's rows in shared memory (unicast: only rows from sources on this node).
    rows = handle.local_recv_rows
    base = np.zeros(L + 1, dtype=np.int64)
    np.cumsum(rows, out=base[1:])
    window_id = OP + 256 * _dtypes.code(str(dtype).replace("torch.", ""))
    need, mismatch = g.node_agree(what, (OP, seq, rb, window_id, int(unicast)), need_bytes=int(base[-1]) * rb)
    if mismatch is not None:
        raise mismatch
    staging = g.node_buffer("combine", need)
    own_rows = np.isin(handle.recv_src_rank, topo.local_ranks) if unicast else slice(None)
    mine = y_bytes[own_rows]
    staging[base[lr] * rb:base[lr + 1] * rb] = mine.reshape(-1)
    if L > 1 and len(mine):
        g.stats.add_intra(mine.nbytes)
    g.node_barrier(what)
    if TRACE is not None: TRACE.append(("staged", _pc()))
    stage = _typed(staging, dtype, int(base[-1]), H)

    # 2. Units whose partial rows come back to me: nodes (MultiWrite) or own node + ranks (unicast).
    if unicast:
        units = [("node", node, handle.node_tokens[handle.node_offsets[node]:handle.node_offsets[node + 1]])]
        units += [("rank", d, handle.rank_tokens[handle.rank_offsets[d]:handle.rank_offsets[d + 1]])
                  for d in range(P) if topo.node_of[d] != node]
    else:
        units = [("node", m, handle.node_tokens[handle.node_offsets[m]:handle.node_offsets[m + 1]])
                 for m in range(N)]
    offs = np.zeros(len(units) + 1, dtype=np.int64)
    np.cumsum([len(u[2]) for u in units], out=offs[1:])
    partial_bytes = g.private_buffer("combine_partials", int(offs[-1]) * rb)
    partials = _typed(partial_bytes, dtype, int(offs[-1]), H)
    tag = tag_for(OP, seq)
    headers_in = _packets.header_buffers(g, "combine_hin", len(units))
    recvs, checks = [], []
    for u, (kind, who, tokens) in enumerate(units):
        if not len(tokens):
            continue
        if kind == "node" and who == node:
            _core.gather_reduce(stage, handle.reduce_index[g.rank], partials[offs[u]:offs[u + 1]])
            continue
        src = topo.relay_for(g.rank, who) if kind == "node" else who
        recvs.append(_packets.PacketRecv(g, headers_in[u], partial_bytes[offs[u] * rb:offs[u + 1] * rb], src, tag, what))
        checks.append((u, src, int(len(tokens)) * rb))

    # 3. Send back what I owe: node partials of the remote sources I relay (MultiWrite), or my own
    #    rows of every remote source (unicast, rows from one source are contiguous in y).
    sends, out_parts = [], []
    if unicast:
        start = np.zeros(P + 1, dtype=np.int64)
        np.cumsum(handle.recv_counts, out=start[1:])
        for s in range(P):
            if topo.node_of[s] != node and handle.recv_counts[s]:
                out_parts.append((s, y_bytes[start[s]:start[s + 1]].reshape(-1)))
    else:
        total = sum(len(ix) for s, ix in handle.reduce_index.items() if s != g.rank)
        send_bytes = g.private_buffer("combine_send", total * rb)
        pos = 0
        for s, ix in sorted(handle.reduce_index.items()):
            if s == g.rank:
                continue
            part = send_bytes[pos * rb:(pos + len(ix)) * rb]
            _core.gather_reduce(stage, ix, _typed(part, dtype, len(ix), H))
            pos += len(ix)
            out_parts.append((s, part))
    if TRACE is not None: TRACE.append(("reduced", _pc()))
    headers_out = _packets.header_buffers(g, "combine_hout", len(out_parts))
    for i, (s, part) in enumerate(out_parts):
        sends += _packets.send(g, headers_out[i], part, s, tag, window_id=window_id, seq=seq,
                               dest_bitmap=1 << topo.local_rank_of[s])

    def check_headers():
        for u, src, nbytes in checks:
            _packets.check(headers_in[u], what=what, window_id=window_id, seq=seq, src_rank=src,
                           window_size=nbytes, num_local_ranks=topo.local_size, payload_len=nbytes)

    if TRACE is not None: TRACE.append(("sent", _pc()))
    error = _packets.complete(g, what, recvs, sends, check_headers)
    if TRACE is not None: TRACE.append(("exchanged", _pc()))
    if error is not None:
        raise error

    # 4. Sum the partials of every token across units, in unit order (deterministic).
    index = np.full((T, max(len(units), 1)), -1, dtype=np.int64)
    for u, (_, _, tokens) in enumerate(units):
        index[tokens, u] = offs[u] + np.arange(len(tokens), dtype=np.int64)
    out = torch.empty((T, H), dtype=dtype)
    out_np = out.view(torch.uint8).numpy().reshape(-1)
    _core.gather_reduce(partials, index, _typed(out_np, dtype, T, H))
    return out
