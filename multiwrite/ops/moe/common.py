"""What MoE dispatch and combine share: the accepted dtypes, the per-call agreement of every rank's
arguments, the node buffer's flag words, and output allocation."""
import time

import numpy as np
import torch

from ... import _core
from ...engine.control import allgather_int64
from ...errors import MismatchError, MultiwriteTimeout

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def agree(g, what, status, ints, length):
    """One fixed-size control allgather: every rank's status flag and ``length`` integers.

    If any rank failed its local checks, a second allgather shares the messages and every rank raises
    the same error (ValueError on the failing ranks, MismatchError on the others). Returns int64
    [P, length]."""
    vec = np.zeros(1 + length, dtype=np.int64)
    if status is None:
        vec[1:] = ints
    else:
        vec[0] = 1
    table = allgather_int64(g, vec, what)
    if table[:, 0].any():
        messages = g.allgather_obj(status)
        text = "; ".join(f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None)
        raise (ValueError if status is not None else MismatchError)(f"{what}: {text}")
    return table[:, 1:]


def empty_tensor(shape, dtype):
    """Like torch.empty, backed by NumPy (malloc) memory: large torch CPU allocations come as fresh
    pages on every call (page faults cost ~1 ms per MiB on a VM), malloc's heap reuses freed memory."""
    nbytes = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
    raw = torch.from_numpy(np.empty(nbytes, dtype=np.uint8))
    return raw.view(dtype).reshape(shape) if nbytes else torch.empty(shape, dtype=dtype)


def wait_done(g, what, shared, offset):
    """Wait until every local rank's done word (u32 at ``offset + 4 * local rank``) has reached this
    rank's own: they have all finished reading the node buffer in the previous call of the operation."""
    lr = g.topo.local_rank
    prev = _core.atomic_load_u32(shared, offset + 4 * lr)
    deadline = time.monotonic() + g.timeout_s
    for j in range(g.topo.local_size):
        if j != lr and not _core.wait_u32_ge(shared, offset + 4 * j, prev, max(deadline - time.monotonic(), 1e-3)):
            raise MultiwriteTimeout(f"{what}: timed out after {g.timeout_s:g}s waiting for rank "
                                    f"{g.topo.local_ranks[j]} of this node to finish the previous call "
                                    f"(died, hangs, or called a different operation)")


def flag_bytes(n):
    """Bytes of ``n`` u32 arrival flags at the start of a node buffer (64-byte aligned)."""
    return (4 * n + 63) // 64 * 64
