"""The data of the stress test, from the seeds alone (every rank computes every rank's): payload pools,
MoE tokens and routing, the reference a dispatch must deliver, and byte-for-byte comparison."""
import numpy as np
import torch

POOL_PAD = 1 << 16


class Pools:
    """A random byte pool per rank (from the seed); rank s's payload of step i is a slice of its pool
    at a step-dependent offset XOR a step-dependent key: cheap to generate on every rank."""

    def __init__(self, seed, P, max_bytes):
        self.pool = [np.random.default_rng([seed, 99, s]).integers(0, 256, max_bytes + POOL_PAD, dtype=np.uint8)
                     for s in range(P)]

    def chunk(self, step, s, n, salt=0, out=None):
        h = (step * 2654435761 + s * 40503 + salt * 9973) & 0xFFFFFFFF
        off, key = h % POOL_PAD, (h >> 16) & 0xFF or 0x5C
        src = self.pool[s][off:off + n]
        if out is None:
            return np.bitwise_xor(src, key)
        np.bitwise_xor(src, key, out=out)
        return out


def moe_inputs(seed, step, s, T, H, E, k, dtype, routing, P, node_of, salt=0):
    """Rank s's tokens (small integers, exact in every float dtype), routing and weights for one step."""
    rng = np.random.default_rng([seed, step, s, 7, salt])
    a = rng.integers(0, 251, T).astype(np.int16)         # int16: no T x H int64 temporaries
    b = np.random.default_rng([seed, step, 8, salt]).integers(0, 251, H).astype(np.int16)
    x = torch.from_numpy(((a[:, None] + b[None, :]) % 251).astype(np.float32)).to(dtype)
    if routing == "none" or T == 0:
        idx = np.full((T, k), -1, dtype=np.int64)
    else:
        # k distinct experts per token: top-k of random keys (Gumbel top-k = sampling without
        # replacement with probability ~ popularity)
        keys = rng.random((T, E))
        if routing == "skewed":
            zipf = 0.5 + (step % 7) / 4
            pop = 1.0 / (np.random.default_rng([seed, step, 9]).permutation(E) + 1.0) ** zipf
            keys = np.log(pop)[None, :] - np.log(-np.log(np.maximum(keys, 1e-300)))
        elif routing == "one_node":
            first = [r for r in range(P) if node_of[r] == 0]
            lo, hi = min(first) * (E // P), (max(first) + 1) * (E // P)
            keys[:, :lo] = -1.0
            keys[:, hi:] = -1.0
        kk = min(k, E)
        idx = np.argsort(-keys, axis=1, kind="stable")[:, :kk].astype(np.int64)
        if routing == "one_node":
            idx[np.take_along_axis(keys, idx, 1) < 0] = -1
        if routing == "uniform_none":
            idx[rng.random((T, kk)) < 0.2] = -1
    idx = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    w = torch.from_numpy(rng.random((T, k), dtype=np.float32))
    return x, idx, w


def compare(got, expected):
    """(bytes compared, wrong bytes) of two tensors/arrays; a shape mismatch makes every byte wrong."""
    def raw(t):
        if isinstance(t, torch.Tensor):
            t = t.detach().contiguous()
            return t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        return np.ascontiguousarray(t).reshape(-1).view(np.uint8)
    a, b = raw(got), raw(expected)
    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and tuple(got.shape) != tuple(expected.shape):
        return b.nbytes, max(a.nbytes, b.nbytes, 1)
    if a.nbytes != b.nbytes:
        return b.nbytes, max(a.nbytes, b.nbytes, 1)
    return b.nbytes, int(np.count_nonzero(a != b))


def dispatch_reference(inputs, me, E, P):
    """What rank ``me`` must receive from a dispatch of every rank's ``inputs``: (source, token) rows,
    tokens, local expert ids (-1: not mine), weights, tokens per local expert."""
    per = E // P
    lo, hi = me * per, (me + 1) * per
    rows, xs, ids, ws = [], [], [], []
    for s, (x, idx, w) in enumerate(inputs):
        if idx.shape[0] == 0:
            continue
        hit = torch.nonzero(((idx >= lo) & (idx < hi)).any(dim=1)).flatten()
        rows += [(s, int(t)) for t in hit]
        xs.append(x[hit])
        sel = idx[hit]
        ids.append(torch.where((sel >= lo) & (sel < hi), sel - lo, torch.full_like(sel, -1)))
        ws.append(w[hit])
    k = inputs[0][1].shape[1]
    H = inputs[0][0].shape[1]
    dtype = inputs[0][0].dtype
    x = torch.cat(xs) if xs else torch.empty(0, H, dtype=dtype)
    idx = torch.cat(ids) if ids else torch.empty(0, k, dtype=torch.int64)
    w = torch.cat(ws) if ws else torch.empty(0, k, dtype=torch.float32)
    per_expert = torch.bincount(idx[idx >= 0], minlength=per).tolist() if idx.numel() else [0] * per
    return {"rows": rows, "x": x, "idx": idx, "w": w, "per_expert": per_expert}


def check_dispatch(got, ref):
    """(bytes compared, wrong bytes) of a dispatch result against dispatch_reference."""
    recv_x, recv_idx, recv_w, per_expert = got
    v, wr = 0, 0
    for a, b in ((recv_x, ref["x"]), (recv_idx, ref["idx"]), (recv_w, ref["w"])):
        dv, dw = compare(a, b)
        v, wr = v + dv, wr + dw
    pe = np.asarray(list(per_expert), dtype=np.int64)
    dv, dw = compare(pe, np.asarray(ref["per_expert"], dtype=np.int64))
    return v + dv, wr + dw
