"""AllGather on MultiWrite: every rank's chunk crosses each remote node's link once.

MultiWrite mode (default): rank r sends its chunk once to one relay on every other node (relays are
spread over the node's ranks); the relay receives it straight into the node's shared staging buffer,
where every rank of that node reads it. Chunks of the own node are written to the staging buffer
directly. Inter-node bytes leaving a node: L·(N−1)·(c + 64) (64 = packet header).

Unicast mode (``MULTIWRITE_MODE=unicast`` or ``mode="unicast"``): one copy per remote rank, received
straight into the output: L·(P−L)·(c + 64) bytes leave a node. Same results.
"""

from . import _dtypes, _packets, _tensors
from .group import resolve, tag_for

OP = _packets.WIN_ALLGATHER


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
    staging_bytes = (topo.local_size if unicast else P) * c
    need, mismatch = g.node_agree(what, (OP, seq, c, window_id, int(unicast)), need_bytes=staging_bytes)
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
