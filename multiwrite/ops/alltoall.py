"""AlltoAll on the multiwrite runtime (what ``dist.all_to_all_single`` runs on the "multiwrite" backend).

Every chunk goes to exactly one rank, so there is nothing for MultiWrite to deduplicate: chunks for
ranks of another node cross the network once each, as one packet (64-byte header + payload) received
straight into the destination's output; chunks for ranks of the same node go through the node's shared
staging buffer, never through the network. Inter-node bytes leaving a node: the sum over its ranks of
(bytes sent to remote ranks + 64 per remote rank). The headers carry the chunk length, so ranks that
disagree on the split sizes get a MismatchError naming the peer instead of corrupt data.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from ..engine import packets as _packets
from ..engine.control import allgather_int64
from ..runtime import dtypes as _dtypes, tensors as _tensors
from ..errors import MismatchError
from ..runtime.group import resolve, tag_for

if TYPE_CHECKING:
    import torch

    from ..runtime.group import Group

    TensorLike = Union[torch.Tensor, np.ndarray]

OP = _packets.WIN_ALLTOALL


def _splits(name, splits, rows, size):
    if splits is None or len(splits) == 0:
        if rows % size:
            raise ValueError(f"all_to_all_single: the {name}'s first dimension ({rows}) is not divisible by "
                             f"the group size ({size}); pass {name}_split_sizes")
        return [rows // size] * size
    splits = [int(s) for s in splits]
    if len(splits) != size or any(s < 0 for s in splits):
        raise ValueError(f"all_to_all_single: {name}_split_sizes must have {size} non-negative entries, "
                         f"got {splits}")
    if sum(splits) != rows:
        raise ValueError(f"all_to_all_single: {name}_split_sizes sum to {sum(splits)}, but the {name} has "
                         f"{rows} rows")
    return splits


def all_to_all_single(output: TensorLike, input: TensorLike, output_split_sizes: Sequence[int] | None = None,
                      input_split_sizes: Sequence[int] | None = None, *, group: Group | None = None) -> TensorLike:
    """Like ``dist.all_to_all_single``: rows ``input[in_off[d]:in_off[d] + input_split_sizes[d]]`` go to
    rank d, and the rows from rank s land at ``output[out_off[s]:...]`` (offsets = prefix sums of the
    split sizes; None = equal splits of dim 0).

    output/input: torch tensors or numpy arrays of one dtype, any trailing shape (equal on every rank),
    contiguous or not. Returns ``output``. Raises ValueError for bad splits, MismatchError when a peer's
    chunk does not have the size this rank expects, MultiwriteTimeout when a peer is missing.
    """
    g = resolve(group)
    if _tensors.dtype_name(output) != _tensors.dtype_name(input):
        raise TypeError(f"all_to_all_single: output dtype {_tensors.dtype_name(output)} differs from input "
                        f"dtype {_tensors.dtype_name(input)}")
    in_rows = int(input.shape[0]) if len(input.shape) else 1
    out_rows = int(output.shape[0]) if len(output.shape) else 1
    n_in, n_out = _tensors.numel(input), _tensors.numel(output)
    row_in = n_in // in_rows if in_rows else 0
    row_out = n_out // out_rows if out_rows else 0
    if in_rows and out_rows and row_in != row_out:
        raise ValueError(f"all_to_all_single: input rows have {row_in} elements, output rows {row_out}")
    row_bytes = (row_in or row_out) * _tensors.itemsize(input)
    send = [s * row_bytes for s in _splits("input", input_split_sizes, in_rows, g.size)]
    recv = [s * row_bytes for s in _splits("output", output_split_sizes, out_rows, g.size)]
    src = _tensors.input_bytes(input)
    dst = _tensors.OutputBytes(output)
    all_to_all_bytes(g, dst.bytes, src, send, recv, dtype=_tensors.dtype_name(input))
    return dst.commit()


def _agree_on_splits(g, what, send_bytes, recv_bytes):
    """Every rank learns every rank's split sizes (one small control allgather) and raises the same
    MismatchError when what some rank sends to another differs from what that one expects: a
    disagreement fails every rank of the group, not only the ranks of the pairs that disagree."""
    P = g.size
    table = allgather_int64(g, np.concatenate([send_bytes, recv_bytes]).astype(np.int64), what)
    sends, expects = table[:, :P], table[:, P:]
    bad = np.argwhere(sends != expects.T)           # (s, d): s sends d other than d expects from s
    if len(bad):
        pairs = ", ".join(f"rank {s} sends rank {d} {int(sends[s, d])} bytes, rank {d} expects "
                          f"{int(expects[d, s])}" for s, d in bad[:4])
        more = f" (and {len(bad) - 4} more pairs)" if len(bad) > 4 else ""
        raise MismatchError(f"{what}: split sizes differ across ranks: {pairs}{more}")


def all_to_all_bytes(g, out, src, send_bytes, recv_bytes, *, dtype="uint8", same_table=False, key=None):
    """Byte-level AlltoAll: ``src[soff[d]:soff[d] + send_bytes[d]]`` goes to rank d, and rank s's chunk
    lands at ``out[roff[s]:roff[s] + recv_bytes[s]]``. ``same_table``: every rank derived the splits from
    the same table (e.g. a dispatch's routing), so the control round that compares them is skipped;
    the receives are then matched before they are posted (a chunk of another size is a MismatchError
    from the headers on the ranks whose chunks differ, never a write past a buffer).
    ``key``: an integer in [0, 2**14) every rank must pass equal (which dispatch a MoE combine belongs
    to); it is part of the packets' window id, so ranks with other keys get a MismatchError."""
    topo = g.topo
    P, r, L = g.size, g.rank, topo.local_size
    soff = np.concatenate([[0], np.cumsum(send_bytes)]).astype(np.int64)
    roff = np.concatenate([[0], np.cumsum(recv_bytes)]).astype(np.int64)
    if soff[-1] != src.nbytes or roff[-1] != out.nbytes:
        raise ValueError(f"all_to_all: {src.nbytes}/{out.nbytes} bytes in/out, the splits say "
                         f"{int(soff[-1])}/{int(roff[-1])}")
    seq = g.next_seq()
    tag = tag_for(OP, seq)
    window_id = OP + 256 * _dtypes.code(dtype) + (0 if key is None else (int(key) + 1) << 16)
    what = f"all_to_all (call #{seq}, {int(soff[-1])} bytes of {dtype} out, {int(roff[-1])} in" + \
        ("" if key is None else f", key {key}") + ")"
    if not same_table:
        _agree_on_splits(g, what, send_bytes, recv_bytes)
    # Intra-node chunks go through one slot per (source, destination) local pair, sized by the node's
    # largest such chunk (node_agree shares it).
    local_max = max([send_bytes[d] for d in topo.local_ranks if d != r] + [0])
    need, mismatch = g.node_agree(what, (OP, seq, window_id), need_bytes=local_max)
    slot = need
    table_bytes = (8 * L * L + 63) & ~63          # int64 [L, L]: bytes each local pair exchanges
    staging = g.node_buffer("alltoall", table_bytes + L * L * slot) if L > 1 else None
    table = staging[:8 * L * L].view(np.int64) if L > 1 else None

    remote = [s for s in range(P) if not topo.same_node(s)]
    headers_in = _packets.header_buffers(g, "alltoall_hin", len(remote))
    recvs = [_packets.PacketRecv(g, headers_in[i], out[roff[s]:roff[s + 1]], s, tag, what, agreed=not same_table)
             for i, s in enumerate(remote)]

    me = topo.local_rank
    if send_bytes[r] != recv_bytes[r]:
        # Still take part in the exchange (peers must not be left waiting), then raise.
        mismatch = mismatch or MismatchError(
            f"{what}: this rank sends itself {send_bytes[r]} bytes but expects {recv_bytes[r]} "
            f"(input and output split sizes disagree)")
    for d in topo.local_ranks:
        if d == r:
            if send_bytes[r] == recv_bytes[r]:
                out[roff[r]:roff[r + 1]] = src[soff[r]:soff[r + 1]]
        else:
            base = table_bytes + (me * L + topo.local_rank_of[d]) * slot
            staging[base:base + send_bytes[d]] = src[soff[d]:soff[d + 1]]
            table[me * L + topo.local_rank_of[d]] = send_bytes[d]
            g.stats.add_intra(send_bytes[d])

    headers_out = _packets.header_buffers(g, "alltoall_hout", len(remote))
    sends = []
    for i, d in enumerate(remote):
        sends += _packets.send(g, headers_out[i], src[soff[d]:soff[d + 1]], d, tag, window_id=window_id,
                               seq=seq, dest_bitmap=1 << topo.local_rank_of[d])

    def check_headers():
        for i, s in enumerate(remote):
            _packets.check(headers_in[i], what=what, window_id=window_id, seq=seq, src_rank=s,
                           window_size=recv_bytes[s], num_local_ranks=L, payload_len=recv_bytes[s])

    error = _packets.complete(g, what, recvs, sends, check_headers, mismatch)
    if L > 1:
        g.node_sync(what, error)      # every local chunk is in the staging buffer (or all ranks raise)
        bad = [(s, int(table[topo.local_rank_of[s] * L + me])) for s in topo.local_ranks
               if s != r and int(table[topo.local_rank_of[s] * L + me]) != recv_bytes[s]]
        if bad:
            raise MismatchError(f"{what}: " + ", ".join(f"rank {s} sent {n} bytes, this rank expects "
                                                        f"{recv_bytes[s]}" for s, n in bad)
                                + " (split sizes differ across ranks)")
        for s in topo.local_ranks:
            if s != r:
                base = table_bytes + (topo.local_rank_of[s] * L + me) * slot
                out[roff[s]:roff[s + 1]] = staging[base:base + recv_bytes[s]]
    elif error is not None:
        raise error
    return out


__all__ = ["all_to_all_single", "all_to_all_bytes"]
