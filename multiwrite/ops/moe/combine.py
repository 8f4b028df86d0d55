"""MoE combine on MultiWrite: the reverse of dispatch with a partial reduction per node.

Every rank holds expert outputs for the rows it received in dispatch. MultiWrite mode: the ranks of a
node write their rows into the node's shared staging buffer; for each source token the rows of all
ranks of the node are summed there (C++ core, float32 accumulation, fixed order) and one row per
(token, node) crosses the network back to the source, which sums across nodes in node order.
No node barrier: the rows are staged source by source (remote sources first) with a flag per
(source, local rank), and the rank that relays a remote source sums and sends its partial, in pieces
of ~2 MiB, as soon as every local rank has staged that source's rows.
Unicast mode: one row per (token, destination rank) returns and the source sums over ranks.
Results are bitwise deterministic from run to run; float32 results of the two modes agree to ~1e-6.

Zero-copy input (DeepEP's low-latency combine buffer convention): ``get_combine_buffer`` hands out
this rank's block of the node's staging area; expert outputs written straight into it are not copied
again by ``combine`` (the copy is ~11 MiB per rank at T=256, H=4096, bf16, and measured ~8 % of the
combine's time on the 2 x 4 virtual cluster, where 8 ranks share 2 cores).
"""
import time
from time import perf_counter as _pc

import numpy as np
import torch

from ... import _core
from ...engine import packets as _packets
from ...runtime import dtypes as _dtypes
from ...engine import tree
from ...errors import MismatchError, MultiwriteTimeout
from ...runtime.group import resolve, tag_for
from . import low_latency as _low_latency
from .common import FLOAT_DTYPES, agree, empty_tensor, flag_bytes, wait_done

OP = _packets.WIN_COMBINE
#: Tokens summed between two chances to call the transport's progress (a few hundred us of work).
_PROGRESS_TOKENS = 32
TRACE = None                # a list: (label, perf_counter) of the phases (profiling)


class _ZeroCopy:
    """Per group: the block of the node's staging area that get_combine_buffer handed out for the next
    combine, as (handle seq, hidden, dtype, address), and the address of the last one handed out."""
    __slots__ = ("issued", "last_block")

    def __init__(self):
        self.issued = self.last_block = None


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
    elif y.dtype not in FLOAT_DTYPES:
        status = f"y must be float32, float16 or bfloat16, got {y.dtype}"
    low_latency = _low_latency.combine_capacity(g, handle)
    if low_latency:             # the handle of a low-latency dispatch (the same path on every rank)
        return _low_latency.combine(g, what, y, handle, status, low_latency)
    # y written in place in the buffer get_combine_buffer handed out for this call: no staging copy.
    zc = g.extension("moe.combine", _ZeroCopy)
    issued, zc.issued = zc.issued, None
    zero_copy = False
    if status is None and y.numel() and issued is not None and y.data_ptr() == issued[-1]:
        if issued[:-1] != (handle.seq, int(y.shape[1]), y.dtype) or not y.is_contiguous():
            status = ("y is a combine buffer handed out for another handle, hidden size or dtype (call "
                      "get_combine_buffer(handle) for this combine, and pass the tensor it returned)")
        else:
            zero_copy = True
    elif status is None and y.numel() and zc.last_block is not None and y.data_ptr() == zc.last_block:
        status = ("y is the combine buffer of an earlier combine: call get_combine_buffer(handle) again "
                  "before writing each combine's input (other ranks of the node may still read the old one)")
    # The staging layout and the node buffer's size follow from the handle: every rank must pass the
    # handle of the same dispatch call.
    ints = [int(y.shape[1]), _dtypes.code(str(y.dtype).replace("torch.", "")), handle.seq] \
        if status is None else None
    table = agree(g, what, status, ints, 3)
    if TRACE is not None: TRACE.append(("agreed", _pc()))
    if (table != table[0]).any():
        raise MismatchError(f"{what}: ranks disagree on (hidden, dtype code, dispatch call of the handle): "
                            + ", ".join(f"rank {r}: {tuple(int(v) for v in m)}" for r, m in enumerate(table)))
    H, dtype = y.shape[1], y.dtype
    rb = H * y.element_size()
    unicast = handle.mode == "unicast"
    T = handle.num_tokens
    y_bytes = y.detach().contiguous().view(torch.uint8).numpy().reshape(-1, rb) if y.numel() else \
        np.zeros((y.shape[0], rb), dtype=np.uint8)
    window_id = OP + 256 * _dtypes.code(str(dtype).replace("torch.", ""))
    tag = tag_for(OP, seq)
    ready = (2 * seq) & 0xFFFFFFFF
    progress = _packets.Progress(g.transport)
    deadline = time.monotonic() + g.timeout_s

    # 1. Units whose partial rows come back to me: nodes (MultiWrite) or own node + ranks (unicast).
    #    Their receives are posted first, so that a partial can land whenever it is sent.
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
    headers_in = _packets.header_buffers(g, "combine_hin", len(units) * _packets.MAX_PIECES)
    recvs, checks, own_unit = [], [], None
    for u, (kind, who, tokens) in enumerate(units):
        if not len(tokens):
            continue
        if kind == "node" and who == node:
            own_unit = u
            continue
        src = tree.spread(topo, g.rank, who) if kind == "node" else who
        cuts = _packets.pieces(g, len(tokens), rb) if kind == "node" else [0, len(tokens)]
        for i in range(len(cuts) - 1):
            a, b = offs[u] + cuts[i], offs[u] + cuts[i + 1]
            h = u * _packets.MAX_PIECES + i
            recvs.append(_packets.PacketRecv(g, headers_in[h], partial_bytes[a * rb:b * rb], src, tag, what))
            checks.append((h, src, int(b - a) * rb, int(len(tokens)) * rb, int(cuts[i]) * rb))
    start = np.zeros(P + 1, dtype=np.int64)     # rows of y from each source (y is in source order)
    np.cumsum(handle.recv_counts, out=start[1:])
    sends = []
    per = _packets.MAX_PIECES
    headers_out = _packets.header_buffers(g, "combine_hout", P * per)
    if unicast:
        # Rows of remote sources go back as they are, straight from y.
        for s in range(P):
            if topo.node_of[s] != node and handle.recv_counts[s]:
                sends += _packets.send(g, headers_out[s * per], y_bytes[start[s]:start[s + 1]].reshape(-1), s, tag,
                                       window_id=window_id, seq=seq, dest_bitmap=1 << topo.local_rank_of[s])

    # 2. Stage this node's rows in shared memory, source by source (unicast: only sources on this
    #    node), each local rank's rows stacked in local-rank order. A (source, local rank) flag turns
    #    ready when that rank has staged its rows of that source, so the rank that sums a source's node
    #    partial starts as soon as that source is complete: remote sources first, whose partials cross
    #    the network. A done word per local rank says it finished reading the staging area (the next
    #    combine waits for all of them instead of a node barrier).
    fbytes, base = _node_layout(g, handle)
    shared = g.node_buffer("combine", fbytes + int(base[-1]) * rb)   # same size on every local rank
    staging = shared[fbytes:]
    stage = _typed(staging, dtype, int(base[-1]), H)
    wait_done(g, what, shared, 4 * P * L)
    try:
        local = [s for s in range(P) if topo.node_of[s] == node]
        remote = [] if unicast else [s for s in range(P) if topo.node_of[s] != node]
        staged_rows = np.zeros(P, dtype=np.int64)
        staged_rows[remote + local] = handle.recv_counts[remote + local]
        at = np.zeros(P + 1, dtype=np.int64)           # row of each source in my block, in source order
        np.cumsum(staged_rows, out=at[1:])
        at += base[lr]

        def stage_rows(sources):
            try:
                for s in sources:
                    if not zero_copy:     # else y already is my block of the staging area
                        staging[at[s] * rb:at[s + 1] * rb] = y_bytes[start[s]:start[s + 1]].reshape(-1)
                    _core.atomic_store_u32(shared, 4 * (s * L + lr), ready)
                    progress()
            except BaseException:
                for s in range(P):
                    _core.atomic_store_u32(shared, 4 * (s * L + lr), (ready + 1) & 0xFFFFFFFF)
                raise

        # 3. Node partials of the remote sources this rank relays (MultiWrite): sent back in pieces,
        #    each as soon as it is summed, so the link starts early. A relayed source is summed as
        #    soon as every local rank has staged it, between the sources this rank still stages
        #    (every rank stages in the same order: the first relayed source is complete after a
        #    quarter of the staging, not at its end). Then the rows of this node's sources are staged
        #    (no rows of other sources: their flags are set at once), and the partial of this rank's
        #    own tokens is summed.
        relayed = [(s, ix) for s, ix in sorted(handle.reduce_index.items()) if s != g.rank]
        send_bytes = g.private_buffer("combine_send", rb * sum(len(ix) for _, ix in relayed))
        pos = 0

        def relay(s, ix):
            nonlocal pos, sends
            cuts = _packets.pieces(g, len(ix), rb)
            for i in range(len(cuts) - 1):
                a, b = cuts[i], cuts[i + 1]
                part = send_bytes[(pos + a) * rb:(pos + b) * rb]
                _core.gather_reduce(stage, ix[a:b], _typed(part, dtype, b - a, H))
                sends += _packets.send(g, headers_out[s * per + i], part, s, tag, window_id=window_id,
                                       seq=seq, dest_bitmap=1 << topo.local_rank_of[s], offset=a * rb)
                progress()
            pos += len(ix)

        for s in remote:
            stage_rows([s])
            while relayed and _staged(g, what, shared, relayed[0][0], ready):
                relay(*relayed.pop(0))
        if TRACE is not None: TRACE.append(("staged", _pc()))
        for s, ix in relayed:
            _wait_staged(g, what, shared, s, ready, deadline, sends)
            relay(s, ix)
        if TRACE is not None: TRACE.append(("sent", _pc()))
        stage_rows(local)
        for s in range(P):
            if s not in remote and s not in local:
                _core.atomic_store_u32(shared, 4 * (s * L + lr), ready)
        if L > 1 and at[-1] > base[lr]:
            g.stats.add_intra(int(at[-1] - base[lr]) * rb)
        if own_unit is not None:
            _wait_staged(g, what, shared, g.rank, ready, deadline, sends)
            own_ix, own = handle.reduce_index[g.rank], partials[offs[own_unit]:offs[own_unit + 1]]
            for a in range(0, len(own_ix), _PROGRESS_TOKENS):
                _core.gather_reduce(stage, own_ix[a:a + _PROGRESS_TOKENS], own[a:a + _PROGRESS_TOKENS])
                progress()
        if TRACE is not None: TRACE.append(("reduced", _pc()))
    finally:
        _core.atomic_store_u32(shared, 4 * (P * L + lr), ready)

    def check_headers():
        for h, src, nbytes, unit_bytes, offset in checks:
            _packets.check_piece(headers_in[h], what=what, window_id=window_id, seq=seq, src_rank=src,
                                 window_size=unit_bytes, num_local_ranks=L, payload_len=nbytes, offset=offset)

    # The output and the final sum's index are made while the partials are still on the wire (a
    # fresh page costs a fault: touch them now).
    index = np.full((T, max(len(units), 1)), -1, dtype=np.int64)
    for u, (_, _, tokens) in enumerate(units):
        index[tokens, u] = offs[u] + np.arange(len(tokens), dtype=np.int64)
    out = empty_tensor((T, H), dtype)
    out_np = out.view(torch.uint8).numpy().reshape(-1)
    out_np[::4096] = 0

    error = _packets.complete(g, what, recvs, sends, check_headers)
    if TRACE is not None: TRACE.append(("exchanged", _pc()))
    if error is not None:
        raise error

    # 4. Sum the partials of every token across units, in unit order (deterministic).
    _core.gather_reduce(partials, index, _typed(out_np, dtype, T, H))
    return out


def _node_layout(g, handle):
    """combine's node buffer: (bytes of its flags and done words, first staging row of each local
    rank's block, int64 [L + 1]); rank j's block is rows base[j]..base[j+1] (MultiWrite mode: its whole y)."""
    L = g.topo.local_size
    base = np.zeros(L + 1, dtype=np.int64)
    np.cumsum(handle.local_recv_rows, out=base[1:])
    return flag_bytes(g.size * L + L), base


def get_combine_buffer(handle, hidden=None, dtype=None, *, group=None):
    """The tensor to write this rank's expert outputs into for the next ``combine`` with ``handle``:
    [R, hidden] of ``dtype`` (defaults: the dispatched rows' hidden size and dtype), R = the rows
    ``dispatch`` delivered to this rank, same order. Pass it to ``combine(y, handle)`` afterwards.

    MultiWrite mode: a view of this rank's block of the node's shared staging area, so ``combine``
    does not copy it (zero-copy, like DeepEP's low-latency combine buffer). Collective over the ranks
    of the node (all call it with the same hidden size and dtype: it may grow the shared area); it
    returns once every rank of the node has finished its previous combine, so writing is safe.
    Write into it only between this call and ``combine``: call it again for every combine (reusing
    the tensor of an earlier call is an error, since other ranks may still read it). Unicast mode
    stages differently: the tensor is ordinary memory and ``combine`` copies as usual; so it is when
    the node's ranks ask for different sizes (``combine`` then raises MismatchError on every rank).
    """
    g = resolve(group)
    if handle is None or getattr(handle, "group", None) is not g:
        raise ValueError("get_combine_buffer: " + ("handle is None" if handle is None
                                                  else "the handle comes from another group"))
    dtype = handle.dtype if dtype is None else dtype
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"get_combine_buffer: dtype must be float32, float16 or bfloat16, got {dtype}")
    esize = torch.empty((), dtype=dtype).element_size()
    H = handle.hidden_bytes // torch.empty((), dtype=handle.dtype).element_size() if hidden is None else int(hidden)
    if H < 0:
        raise ValueError(f"get_combine_buffer: hidden must be >= 0, got {H}")
    R, rb = handle.num_recv_tokens, H * esize
    if handle.mode == "unicast" or handle.low_latency:   # the same on every rank: one dispatch call's handle
        return empty_tensor((R, H), dtype)
    what = "get_combine_buffer"
    lr = g.topo.local_rank
    fbytes, base = _node_layout(g, handle)
    # The node barrier inside makes every local rank be past its previous combine (which read the
    # staging area) and lets all of them grow the shared area together. A rank that received no rows
    # takes part too: its node peers wait for it.
    need, mismatch = g.node_agree(what, (OP, H, _dtypes.code(str(dtype).replace("torch.", "")), handle.seq),
                                  need_bytes=fbytes + int(base[-1]) * rb)
    shared = g.node_buffer("combine", need)         # the node's largest need: the same on every local rank
    if mismatch is not None:
        # Ordinary memory instead: combine's own agreement then reports the disagreement on every rank
        # of the group (raising here would leave the other nodes waiting in combine).
        return empty_tensor((R, H), dtype)
    block = shared[fbytes + int(base[lr]) * rb:fbytes + int(base[lr + 1]) * rb]
    zc = g.extension("moe.combine", _ZeroCopy)
    zc.issued = (handle.seq, H, dtype, block.ctypes.data)
    zc.last_block = block.ctypes.data
    return torch.from_numpy(block).view(dtype).reshape(R, H)


def _staged_by(g, what, shared, s, j, ready):
    """True when local rank ``j`` has staged its rows of source ``s`` (its flag reached ``ready``);
    MismatchError when it failed (flag ``ready + 1``)."""
    flag = _core.atomic_load_u32(shared, 4 * (s * g.topo.local_size + j))
    if flag == (ready + 1) & 0xFFFFFFFF:
        raise MismatchError(f"{what}: rank {g.topo.local_ranks[j]} of this node failed while staging its rows")
    return flag >= ready


def _staged(g, what, shared, s, ready):
    """True when every local rank has staged its rows of source ``s`` (no waiting)."""
    return all(_staged_by(g, what, shared, s, j, ready) for j in range(g.topo.local_size))


def _wait_staged(g, what, shared, s, ready, deadline, sends):
    """Wait until every local rank has staged its rows of source ``s`` (see _staged_by). Pending MPI
    sends are polled meanwhile: a large message moves only while its sender calls into MPI."""
    L = g.topo.local_size
    pollable = g.transport.completes_in_test
    pending = [q for q in sends if not q.test()] if pollable else []
    for j in range(L):
        while not _staged_by(g, what, shared, s, j, ready):
            now = time.monotonic()
            if now > deadline:
                raise MultiwriteTimeout(
                    f"{what}: timed out after {g.timeout_s:g}s waiting for rank {g.topo.local_ranks[j]} of this "
                    f"node to stage its rows (died, hangs, or called a different operation)")
            if pending:
                pending = [q for q in pending if not q.test()]
            _core.wait_u32_ge(shared, 4 * (s * L + j), ready, 5e-5 if pending else min(deadline - now, 0.05))
