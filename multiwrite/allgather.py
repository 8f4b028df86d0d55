"""AllGather on MultiWrite: every rank's chunk crosses each remote node's link once.

MultiWrite mode (default): rank r sends its chunk once to one relay on every other node (relays are
spread over the node's ranks); the relay receives it straight into the node's shared staging buffer,
where every rank of that node reads it. Chunks of the own node are written to the staging buffer
directly. Inter-node bytes leaving a node: L·(N−1)·(c + 64) (64 = packet header).

Unicast mode (``MULTIWRITE_MODE=unicast`` or ``mode="unicast"``): one copy per remote rank, received
straight into the output: L·(P−L)·(c + 64) bytes leave a node. Same results.
"""

import numpy as np

from . import _dtypes, _packets, _tensors
from .errors import MismatchError, MultiwriteError, MultiwriteTimeout
from .group import ROUND_STAGING_BYTES, resolve, tag_for

OP = _packets.WIN_ALLGATHER
#: Chunks up to this size (and P * c up to the round staging area) take the barrier-free path.
SMALL_MAX_BYTES = 64 * 1024
_SMALL, _LARGE = 1, 2       # path id in the node signature: ranks on different paths disagree


def all_gather(out, x, *, group=None, mode=None):
    """Gather ``x`` from every rank into ``out`` (rank order), like ``dist.all_gather_into_tensor``.

    x: tensor or array, any shape and dtype (bfloat16 included), same number of bytes and dtype on
    every rank. out: tensor or array with ``world_size * x.numel()`` elements of x's dtype, any shape
    (e.g. ``[P * n, ...]`` or ``[P, n, ...]``); non-contiguous outputs are written through a copy.
    mode: None (MULTIWRITE_MODE), "multiwrite" or "unicast". Returns ``out``.
    Raises MismatchError when ranks disagree on size or dtype, MultiwriteTimeout when a peer is missing.
    """
    g = resolve(group)
    mode = _config_mode(g, mode)
    if _tensors.dtype_name(out) != _tensors.dtype_name(x):
        raise TypeError(f"all_gather: out has dtype {_tensors.dtype_name(out)}, x has {_tensors.dtype_name(x)}")
    if _tensors.numel(out) != g.size * _tensors.numel(x):
        raise ValueError(f"all_gather: out has {_tensors.numel(out)} elements; expected world_size "
                         f"({g.size}) x {_tensors.numel(x)} = {g.size * _tensors.numel(x)}")
    src = _tensors.input_bytes(x)
    dst = _tensors.OutputBytes(out)
    all_gather_bytes(g, dst.bytes, src, mode=mode, dtype=_tensors.dtype_name(x))
    return dst.commit()


def _config_mode(g, mode):
    from ._config import check_mode
    return g.mode if mode is None else check_mode(mode)


def all_gather_bytes(g, out, src, *, mode="multiwrite", dtype="uint8"):
    """Byte-level AllGather: ``out`` (uint8 [P*c]) receives every rank's ``src`` (uint8 [c])."""
    topo = g.topo
    P, c, r = g.size, src.nbytes, g.rank
    if out.nbytes != P * c:
        raise ValueError(f"all_gather: output has {out.nbytes} bytes, expected {P} x {c}")
    seq = g.next_seq()
    tag = tag_for(OP, seq)
    window_id = OP + 256 * _dtypes.code(dtype)       # the dtype travels in every header
    what = f"all_gather (call #{seq}, {c} bytes of {dtype} per rank)"
    unicast = mode == "unicast"
    if not unicast and 0 < c <= SMALL_MAX_BYTES and P * c <= ROUND_STAGING_BYTES:
        return _all_gather_small(g, out, src, seq, tag, window_id, what)
    staging_bytes = (topo.local_size if unicast else P) * c
    need, mismatch = g.node_agree(what, (OP, seq, c, window_id, int(unicast), _LARGE), need_bytes=staging_bytes,
                                  seq=seq)
    staging = g.node_buffer("allgather", need)

    remote = [s for s in range(P) if not topo.same_node(s)]
    headers_in = _packets.header_buffers(g, "allgather_hin", len(remote))
    recvs, sources = [], []
    if unicast:
        # Every remote rank sends me its own copy, straight into my output.
        senders, landing = remote, lambda s: out[s * c:(s + 1) * c]
        slot = topo.local_rank * c
    else:
        # I relay the chunks whose sources map to me; they land in the node's staging buffer.
        senders = [s for s in remote if topo.relay_for(s, topo.node) == r]
        landing = lambda s: staging[s * c:(s + 1) * c]
        slot = r * c
    for i, s in enumerate(senders):
        recvs.append(_packets.PacketRecv(g, headers_in[i], landing(s), s, tag, what))
        sources.append((i, s))

    staging[slot:slot + c] = src
    if topo.local_size > 1:
        g.stats.add_intra(c)

    if unicast:
        targets = [(d, 1 << topo.local_rank_of[d], d * c) for d in remote]
    else:
        targets = [(topo.relay_for(r, m), _packets.full_bitmap(len(topo.node_ranks[m])), r * c)
                   for m in range(topo.num_nodes) if m != topo.node]
    headers_out = _packets.header_buffers(g, "allgather_hout", len(targets))
    sends = []
    for i, (d, bitmap, offset) in enumerate(targets):
        sends += _packets.send(g, headers_out[i], src, d, tag, window_id=window_id, seq=seq,
                               dest_bitmap=bitmap, offset=offset)

    def check_headers():
        for i, s in sources:
            _packets.check(headers_in[i], what=what, window_id=window_id, seq=seq, src_rank=s,
                           window_size=P * c, num_local_ranks=topo.local_size, payload_len=c)

    error = _packets.complete(g, what, recvs, sends, check_headers, mismatch)
    g.node_sync(what, error)   # every chunk of the node is in the staging buffer (or all ranks raise)

    if unicast:
        for s in topo.local_ranks:
            lr = topo.local_rank_of[s]
            out[s * c:(s + 1) * c] = staging[lr * c:(lr + 1) * c]
    else:
        out[:] = staging[:P * c]
    return out


def _all_gather_small(g, out, src, seq, tag, window_id, what):
    """MultiWrite AllGather without node barriers, for small chunks (latency-bound sizes).

    Same data movement as the general path (one packet per remote node, to that node's relay for this
    source), but every chunk landing in the node's round staging area bumps a counter that the local
    ranks wait on (Group.round_*), instead of an entry barrier plus a node-wide sync. Where the
    transport tolerates a longer message than posted (MPI), header and payload travel as ONE message
    (a 64-byte header followed by the chunk), halving messages and polls; Gloo keeps the two-part packet
    (it aborts on a receive of the wrong size, so the payload receive waits for the header).
    """
    topo = g.topo
    P, c, r = g.size, src.nbytes, g.rank
    H = _packets.HEADER
    staging, rnd = g.round_begin(seq, (OP, seq, c, window_id, 0, _SMALL), arrivals=P)
    fused = not g.transport.exact_size_recv
    remote_nodes = [m for m in range(topo.num_nodes) if m != topo.node]
    senders = [s for s in range(P) if not topo.same_node(s) and topo.relay_for(s, topo.node) == r]

    # Post the receives of the chunks I relay (before sending: my peers may be faster).
    if fused:
        inbox = g.private_buffer(f"allgather_small_in{rnd[0]}", len(senders) * (H + c)).reshape(-1, H + c) \
            if senders else None
        recvs = [g.recv(inbox[i], s, tag) for i, s in enumerate(senders)]
    else:
        headers_in = _packets.header_buffers(g, "allgather_small_hin", len(senders))
        recvs = [_packets.PacketRecv(g, headers_in[i], staging[s * c:(s + 1) * c], s, tag, what)
                 for i, s in enumerate(senders)]

    # My own chunk, for my node peers.
    staging[r * c:(r + 1) * c] = src
    g.round_arrived(rnd)
    if topo.local_size > 1:
        g.stats.add_intra(c)

    # One packet per remote node, to the relay that fans my chunk out there.
    sends = []
    if fused and remote_nodes:
        outbox = g.private_buffer(f"allgather_small_out{rnd[0]}", len(remote_nodes) * (H + c)).reshape(-1, H + c)
        for i, m in enumerate(remote_nodes):
            d = topo.relay_for(r, m)
            _packets.build(outbox[i, :H], window_id=window_id, seq=seq, src_rank=r, dest_node=m,
                           dest_bitmap=_packets.full_bitmap(len(topo.node_ranks[m])), offset=r * c, payload_len=c)
            outbox[i, H:] = src
            g.stats.add_inter(H + c, m)
            sends.append(g.transport.isend(outbox[i], d, tag))
    elif remote_nodes:
        headers_out = _packets.header_buffers(g, "allgather_small_hout", len(remote_nodes))
        for i, m in enumerate(remote_nodes):
            sends += _packets.send(g, headers_out[i], src, topo.relay_for(r, m), tag, window_id=window_id,
                                   seq=seq, dest_bitmap=_packets.full_bitmap(len(topo.node_ranks[m])),
                                   offset=r * c)

    # Land the chunks I relay (each one counts, failed or not, so no local peer waits for it).
    error = None
    for i, s in enumerate(senders):
        try:
            if fused:
                _packets.wait_checked(g, [recvs[i]], what)
                _packets.check(inbox[i, :H], what=what, window_id=window_id, seq=seq, src_rank=s,
                               window_size=P * c, num_local_ranks=topo.local_size, payload_len=c)
                staging[s * c:(s + 1) * c] = inbox[i, H:]
            else:
                recvs[i].wait(g.timeout_s, what)
                _packets.check(headers_in[i], what=what, window_id=window_id, seq=seq, src_rank=s,
                               window_size=P * c, num_local_ranks=topo.local_size, payload_len=c)
        except MultiwriteTimeout:
            raise
        except Exception as exc:
            error = error or (exc if isinstance(exc, MultiwriteError) else MismatchError(f"{what}: {exc}"))
            g.round_failed(rnd, error)
        g.round_arrived(rnd)
    try:
        g.wait_all(sends, what)
    except MultiwriteTimeout:
        raise
    except Exception as exc:
        error = error or exc
    g.round_wait(rnd, what, error)
    out[:] = staging[:P * c]
    return out
