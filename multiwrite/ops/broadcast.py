"""Broadcast on MultiWrite: the root's payload crosses each remote node's link once.

MultiWrite mode (default): the root sends one packet (64-byte header + payload) to one relay on every
other node (the relay tree of engine/tree.py, ``spread`` policy: roots spread over a node's ranks);
the relay receives it straight into the node's shared staging buffer, where every rank of that node
reads it. On the root's own node the root writes the payload to the staging buffer directly.
Inter-node bytes leaving the root's node: (N−1)·(c + 64); every other node sends nothing.

Unicast mode (``MULTIWRITE_MODE=unicast`` or ``mode="unicast"``): one copy per remote rank, received
straight into its output: (P−L_root)·(c + 64) bytes leave the root's node. Same results.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Union

from ..engine import packets as _packets
from ..runtime import dtypes as _dtypes, tensors as _tensors
from ..engine import tree
from .._config import check_mode
from ..runtime.group import resolve, tag_for

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ..runtime.group import Group

    TensorLike = Union[torch.Tensor, np.ndarray]

OP = _packets.WIN_BROADCAST


def broadcast(tensor: TensorLike, root: int = 0, *, group: Group | None = None, mode: str | None = None
              ) -> TensorLike:
    """Copy ``tensor`` of rank ``root`` into ``tensor`` of every rank of the group, in place, like
    ``dist.broadcast(tensor, src=root)``.

    tensor: torch tensor (CPU, any shape, dtype and strides; bfloat16 and bool included) or a
    writable C-contiguous numpy array, with the same number of bytes and dtype on every rank.
    root: rank of the group that holds the data. mode: None (the group's MULTIWRITE_MODE),
    "multiwrite" or "unicast". Returns ``tensor``.
    Raises MismatchError on every rank of a node where some rank disagrees with the root on size, dtype
    or root (nodes whose ranks all match the root's call receive the root's data and return; checking
    every rank against every other would cost a round trip per call: ``dist.broadcast`` on the
    "multiwrite" backend does that check first), MultiwriteTimeout when a peer is missing, ValueError
    for a root outside the group.
    """
    g = resolve(group)
    mode = g.mode if mode is None else check_mode(mode)
    root = int(root)
    if not 0 <= root < g.size:
        raise ValueError(f"broadcast: root {root} is outside the group (size {g.size})")
    dtype = _tensors.dtype_name(tensor)
    if g.rank == root:
        src = _tensors.input_bytes(tensor)
        broadcast_bytes(g, src, root, mode=mode, dtype=dtype)
        return tensor
    dst = _tensors.OutputBytes(tensor)
    broadcast_bytes(g, dst.bytes, root, mode=mode, dtype=dtype)
    return dst.commit()


def broadcast_bytes(g, buf, root, *, mode="multiwrite", dtype="uint8"):
    """Byte-level broadcast: on ``root``, ``buf`` (uint8 [c]) is the source; elsewhere it receives."""
    topo = g.topo
    r, c = g.rank, buf.nbytes
    seq = g.next_seq()
    tag = tag_for(OP, seq)
    window_id = OP + 256 * _dtypes.code(dtype)        # the dtype travels in every header
    what = f"broadcast (call #{seq}, {c} bytes of {dtype} from rank {root})"
    unicast = mode == "unicast"
    root_node = topo.node_of[root]
    need, mismatch = g.node_agree(what, (OP, seq, c, window_id, int(unicast), root), need_bytes=c)
    on_root_node = topo.node == root_node
    # The node's shared staging buffer is read by the root's node, and in MultiWrite mode by every
    # node of more than one rank (its relay receives the single copy into it). Same on all local ranks.
    uses_staging = topo.local_size > 1 and (on_root_node or not unicast)
    staging = g.node_buffer("broadcast", need)[:c] if uses_staging else None

    recvs, header_in, landing = [], None, None
    if not on_root_node:
        if not uses_staging:
            landing = buf           # unicast, or a node of one rank: straight into the output
        elif tree.spread(topo, root, topo.node) == r:
            landing = staging       # this rank relays the node's single copy
        if landing is not None:
            header_in = _packets.header_buffers(g, "broadcast_hin", 1)[0]
            # not agreed: node_agree covers this node only, the root may pass another size
            recvs.append(_packets.PacketRecv(g, header_in, landing, root, tag, what, agreed=False))

    sends = []
    if r == root:
        if uses_staging:
            staging[:] = buf
            g.stats.add_intra(c)
        _, hops = tree.plan(topo, root, range(g.size), relay=None if unicast else tree.spread, per_rank=unicast)
        headers_out = _packets.header_buffers(g, "broadcast_hout", len(hops))
        for i, hop in enumerate(hops):
            sends += _packets.send(g, headers_out[i], buf, hop.relay, tag, window_id=window_id, seq=seq,
                                   dest_bitmap=hop.bitmap)

    def check_header():
        if header_in is not None:
            _packets.check(header_in, what=what, window_id=window_id, seq=seq, src_rank=root,
                           window_size=c, num_local_ranks=topo.local_size, payload_len=c)

    error = _packets.complete(g, what, recvs, sends, check_header, mismatch)
    if uses_staging:
        g.node_sync(what, error)    # the payload is in the node's staging buffer (or all ranks raise)
        if r != root:
            buf[:] = staging
    elif error is not None:
        raise error
    return buf


__all__ = ["broadcast", "broadcast_bytes"]
