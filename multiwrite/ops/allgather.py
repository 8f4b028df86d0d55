"""AllGather on MultiWrite: every rank's chunk crosses each remote node's link once.

MultiWrite mode (default): rank r sends its chunk once to one relay on every other node (relays are
spread over the node's ranks); the relay receives it straight into the node's shared staging buffer,
where every rank of that node reads it. Chunks of the own node are written to the staging buffer
directly. Inter-node bytes leaving a node: L·(N−1)·(c + 64) (64 = packet header).

Unicast mode (``MULTIWRITE_MODE=unicast`` or ``mode="unicast"``): one copy per remote rank, received
straight into the output: L·(P−L)·(c + 64) bytes leave a node. Same results.
"""
from __future__ import annotations

from time import perf_counter as _pc
from typing import TYPE_CHECKING, Union

from ..engine import packets as _packets
from ..runtime import tensors as _tensors
from ..engine import tree
from ..engine.gather import SmallPlan, gather_small, next_call, node_aggregated, small_path  # noqa: F401
from .._config import check_mode
from ..runtime.group import resolve

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..runtime.group import Group

    TensorLike = Union[torch.Tensor, np.ndarray]

OP = _packets.WIN_ALLGATHER
#: Large path: bytes copied between two chances to call the transport's progress.
_COPY_SLICE = 1 << 20
TRACE = None                # a list: (label, perf_counter) of the large path's phases (profiling)
_LARGE = 2                  # path id in the node signature: ranks on different paths disagree


def all_gather(out: TensorLike, x: TensorLike, *, group: Group | None = None, mode: str | None = None
               ) -> TensorLike:
    """Gather ``x`` from every rank into ``out`` (rank order), like ``dist.all_gather_into_tensor``.

    x: tensor or array, any shape and dtype (bfloat16 included), same number of bytes and dtype on
    every rank. out: tensor or array with ``world_size * x.numel()`` elements of x's dtype, any shape
    (e.g. ``[P * n, ...]`` or ``[P, n, ...]``); non-contiguous outputs are written through a copy.
    mode: None (MULTIWRITE_MODE), "multiwrite" or "unicast". Returns ``out``.
    Raises MismatchError when ranks disagree on size or dtype, MultiwriteTimeout when a peer is missing.
    """
    g = resolve(group)
    mode = g.mode if mode is None else check_mode(mode)
    if mode == "multiwrite" and _tensors.is_tensor(x) and _tensors.is_tensor(out):
        # Contiguous CPU tensors of one dtype: the small path takes them as DLPack capsules, with no
        # views and no tensor attributes read (its per-rank relay variant works on NumPy views)
        pair = _tensors.dlpack_pair(x, out)
        if pair is not None:
            cx, co, dtype, c, out_bytes = pair
            if out_bytes == g.size * c and small_path(g.size, c):
                plan = SmallPlan.get(g, c)
                if not plan.relays:
                    gather_small(g, plan, co, cx, *next_call(g, c, dtype))
                    return out
    dtype = _tensors.dtype_name(x)
    if _tensors.dtype_name(out) != dtype:
        raise TypeError(f"all_gather: out has dtype {_tensors.dtype_name(out)}, x has {dtype}")
    if _tensors.numel(out) != g.size * _tensors.numel(x):
        raise ValueError(f"all_gather: out has {_tensors.numel(out)} elements; expected world_size "
                         f"({g.size}) x {_tensors.numel(x)} = {g.size * _tensors.numel(x)}")
    src = _tensors.input_bytes(x)
    dst = _tensors.OutputBytes(out)
    all_gather_bytes(g, dst, src, mode=mode, dtype=dtype)
    return dst.commit()


def all_gather_bytes(g, out, src, *, mode="multiwrite", dtype="uint8"):
    """Byte-level AllGather: ``out`` (uint8 [P*c], or a _tensors.OutputBytes: its byte view is then
    made once this rank's chunk is on its way) receives every rank's ``src`` (uint8 [c])."""
    topo = g.topo
    P, c, r = g.size, src.nbytes, g.rank
    if out.nbytes != P * c:
        raise ValueError(f"all_gather: output has {out.nbytes} bytes, expected {P} x {c}")
    seq, tag, window_id, what = next_call(g, c, dtype)
    unicast = mode == "unicast"
    if not unicast and small_path(P, c):
        return gather_small(g, SmallPlan.get(g, c), _bytes_of(out), src, seq, tag, window_id, what)
    if TRACE is not None: TRACE.append(("enter", _pc()))
    out = _bytes_of(out)
    staging_bytes = (topo.local_size if unicast else P) * c
    need, mismatch = g.node_agree(what, (OP, seq, c, window_id, int(unicast), _LARGE), need_bytes=staging_bytes,
                                  seq=seq)
    staging = g.node_buffer("allgather", need)
    if TRACE is not None: TRACE.append(("agreed", _pc()))

    remote = [s for s in range(P) if not topo.same_node(s)]
    headers_in = _packets.header_buffers(g, "allgather_hin", len(remote))
    recvs, sources = [], []
    if unicast:
        # Every remote rank sends me its own copy, straight into my output.
        senders, landing = remote, lambda s: out[s * c:(s + 1) * c]
        slot = topo.local_rank * c
    else:
        # I relay the chunks whose sources map to me; they land in the node's staging buffer.
        senders = tree.relayed_by(topo, r, remote)
        landing = lambda s: staging[s * c:(s + 1) * c]
        slot = r * c
    # Sizes are not agreed across nodes (node_agree covers this node only): a sender may pass another
    # chunk size, or be on the small path (one fused message), so the receives are probed on MPI.
    for i, s in enumerate(senders):
        recvs.append(_packets.PacketRecv(g, headers_in[i], landing(s), s, tag, what, agreed=False))
        sources.append((i, s))

    staging[slot:slot + c] = src
    if topo.local_size > 1:
        g.stats.add_intra(c)

    _, hops = tree.plan(topo, r, range(P), relay=None if unicast else tree.spread, per_rank=unicast)
    targets = [(hop.relay, hop.bitmap, hop.relay * c if unicast else r * c) for hop in hops]
    headers_out = _packets.header_buffers(g, "allgather_hout", len(targets))
    sends = []
    for i, (d, bitmap, offset) in enumerate(targets):
        sends += _packets.send(g, headers_out[i], src, d, tag, window_id=window_id, seq=seq,
                               dest_bitmap=bitmap, offset=offset)

    if TRACE is not None: TRACE.append(("sent", _pc()))

    def check_headers():
        for i, s in sources:
            _packets.check(headers_in[i], what=what, window_id=window_id, seq=seq, src_rank=s,
                           window_size=P * c, num_local_ranks=topo.local_size, payload_len=c)

    # The chunks of my node are in the staging buffer once every local rank passed this barrier: copy
    # them into my output while the remote chunks are still on the wire (half of the copying at
    # N = 2; unicast: all of it, since remote chunks land straight in the output).
    if mismatch is None and topo.local_size > 1:
        g.node_barrier(what)
    if mismatch is None:
        progress = _packets.Progress(g.transport)
        for s in topo.local_ranks:
            at = topo.local_rank_of[s] * c if unicast else s * c
            for a in range(0, c, _COPY_SLICE):      # the transport moves the transfer in between
                b = min(a + _COPY_SLICE, c)
                out[s * c + a:s * c + b] = staging[at + a:at + b]
                progress()

    if TRACE is not None: TRACE.append(("local_copied", _pc()))
    error = _packets.complete(g, what, recvs, sends, check_headers, mismatch)
    if TRACE is not None: TRACE.append(("landed", _pc()))
    if unicast:
        g.node_sync(what, error)   # my node peers have read my slot of the staging buffer
    else:
        # A remote chunk is in the staging buffer once its relay on this node has arrived here: copy
        # each relay's chunks as it arrives, while the slower relays' chunks are still landing.
        relayed = {}
        for s in remote:
            relayed.setdefault(topo.local_rank_of[tree.spread(topo, s, topo.node)], []).append(s)

        def copy_relayed(i):
            for s in relayed.get(i, ()):
                out[s * c:(s + 1) * c] = staging[s * c:(s + 1) * c]
        g.node_sync_each(what, error, copy_relayed)
    if TRACE is not None: TRACE.append(("synced_copied", _pc()))
    return out




def _bytes_of(out):
    """The uint8 array behind ``out`` (an array, or a _tensors.OutputBytes)."""
    return out.bytes if isinstance(out, _tensors.OutputBytes) else out
