"""Decode-sized MoE dispatch/combine (ops/moe/low_latency.py), checked against a reference built from
every rank's inputs. Run by tests/test_moe_decode_mp.py twice, with the low-latency path on
(MULTIWRITE_DECODE_TOKENS=8) and off (0): each run prints a digest of every result per rank, and the
test compares the two runs' digests (the paths must agree bitwise)."""
import hashlib
import os

import numpy as np
import torch

import multiwrite as mw
from multiwrite import _core

LIMIT = int(os.environ.get("MULTIWRITE_DECODE_TOKENS", "8"))


def inputs_of(step, rank, T, H, E, k, dtype):
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(T, H, generator=g).to(dtype)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k, dtype=torch.int64)
    if T:
        idx[torch.rand(T, k, generator=g) < 0.1] = -1          # some slots choose no expert
    w = torch.rand(T, k, generator=g)
    return x, idx, w


def expected_rows(P, E, everyone, me):
    per = E // P
    return [(s, t) for s, (x, idx, w) in enumerate(everyone) for t in range(idx.shape[0])
            if ((idx[t] >= me * per) & (idx[t] < (me + 1) * per)).any()]


def check_dispatch(what, result, everyone, E, me, P):
    recv_x, recv_idx, recv_w, per_expert, handle = result
    ref = expected_rows(P, E, everyone, me)
    per = E // P
    assert recv_x.shape[0] == len(ref), (what, recv_x.shape, len(ref))
    assert list(handle.recv_src_rank) == [s for s, _ in ref], what
    assert list(handle.recv_src_token) == [t for _, t in ref], what
    for i, (s, t) in enumerate(ref):
        x, idx, w = everyone[s]
        assert torch.equal(recv_x[i].view(torch.uint8), x[t].view(torch.uint8)), (what, i)
        local = torch.where((idx[t] >= me * per) & (idx[t] < (me + 1) * per), idx[t] - me * per, torch.full_like(idx[t], -1))
        assert torch.equal(recv_idx[i], local), (what, i, recv_idx[i], local)
        assert torch.equal(recv_w[i], w[t]), (what, i)
    counts = [sum(int((everyone[s][1][t] == me * per + e).any()) for s, t in ref) for e in range(per)]
    assert per_expert == counts, (what, per_expert, counts)
    # the routing table of the handle: rows each source sends each rank
    rc = np.zeros((P, P), dtype=np.int64)
    for s, (_, idx, _) in enumerate(everyone):
        for t in range(idx.shape[0]):
            for d in {int(e) // per for e in idx[t] if e >= 0}:
                rc[s, d] += 1
    assert (handle.rank_counts == rc).all(), (what, handle.rank_counts, rc)


def digest(h, *tensors):
    for t in tensors:
        h.update(repr(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).clone().view(torch.uint8).numpy().tobytes())


def expect(exc_type, fn, text=""):
    try:
        fn()
    except exc_type as e:
        assert text in str(e), (text, str(e))
        return e
    raise AssertionError(f"no {exc_type.__name__} ({text})")


def main():
    mw.init()
    topo = mw.topology()
    P, r = topo.world_size, topo.rank
    buf = mw.Buffer()
    E, k = 4 * P, 3
    h = hashlib.sha256()
    used = []
    step = 0
    # token counts per call (this rank's: base + rank offset): decode steps, one above the capacity
    # (the normal path in that call, a larger capacity after it), one above the limit, empty calls
    plan = [1, 1, 2, 4, 3, 8, 1, 12, 2, 2, 40, 1, 1, 0, 1]
    for dtype, H in ((torch.float32, 16), (torch.bfloat16, 33)):
        for base in plan:
            step += 1
            T = base + (r % 2 if base else 0)
            x, idx, w = inputs_of(step, r, T, H, E, k, dtype)
            everyone = mw.default_group().transport.allgather_obj((x, idx, w))
            res = buf.dispatch(x, idx, w, E)
            check_dispatch(f"step {step}", res, everyone, E, r, P)
            used.append(res[4].low_latency)
            y = res[0].float() * 1.5 - 0.25
            out = buf.combine(y.to(dtype), res[4])
            # reference: the sum of every rank's row for each of my tokens
            ref = torch.zeros(T, H, dtype=torch.float32)
            for d, rows in enumerate(mw.default_group().transport.allgather_obj(
                    (list(res[4].recv_src_rank), list(res[4].recv_src_token), y.to(dtype).float()))):
                for i, (s, t) in enumerate(zip(rows[0], rows[1])):
                    if s == r:
                        ref[t] += rows[2][i]
            assert out.shape == (T, H) and out.dtype == dtype, (out.shape, out.dtype)
            tol = 1e-5 if dtype == torch.float32 else 3e-2
            assert torch.allclose(out.float(), ref, rtol=tol, atol=tol), (step, (out.float() - ref).abs().max())
            digest(h, res[0], res[1], res[2], out)
    print(f"rank {r}: capacities {used}", flush=True)
    # the capacity rule of low_latency.py: a call runs on C-row blocks when every rank's T <= C, C being
    # the previous call's largest T rounded up to a power of two (0 above the limit, and after a change
    # of hidden size or dtype, whose call agrees first)
    want, cap, prev = [], 0, None
    for dtype, H in ((torch.float32, 16), (torch.bfloat16, 33)):
        for base in plan:
            t_max = base + (1 if base and P > 1 else 0)
            fits = cap and t_max <= cap and prev == (dtype, H)
            want.append(cap if fits else 0)
            c = 1
            while c < t_max:
                c *= 2
            cap, prev = (c if LIMIT and t_max <= LIMIT else 0), (dtype, H)
    assert used == want, (used, want)
    assert sum(1 for c in used if c) >= (8 if LIMIT else 0), used
    print(f"rank {r}: digest {h.hexdigest()}", flush=True)

    # -- the low-latency path's own checks ----------------------------------------------------------
    if LIMIT:
        x, idx, w = inputs_of(900, r, 2, 16, E, k, torch.float32)
        buf.dispatch(x, idx, w, E)
        mw.reset_stats()
        res = buf.dispatch(x, idx, w, E)
        assert res[4].low_latency == 2
        # inter-node bytes: one copy of every remote node's blocks per node (one packet per node pair)
        st = torch.tensor([mw.stats()["inter_node"]["bytes"]], dtype=torch.int64)
        total = int(sum(mw.default_group().transport.allgather_obj(int(st))))
        from multiwrite.ops.moe.low_latency import _Layout
        nb = _Layout(2, 16 * 4, k).nbytes
        N = topo.num_nodes
        want = (N - 1) * (P * nb + 64 * N)      # every node's blocks (one packet) to every other node
        assert total == want, (total, want)
        # a bad expert id on one rank in a call planned for the blocks: every rank raises, then works
        bad = idx.clone()
        if r == 1:
            bad[0, 0] = E + 3
        e = expect((ValueError, mw.MismatchError), lambda: buf.dispatch(x, bad, w, E))
        assert (f"expert id {E + 3}" in str(e)) if r == 1 else isinstance(e, mw.MismatchError), str(e)
        res = buf.dispatch(x, idx, w, E)
        res = buf.dispatch(x, idx, w, E)
        assert res[4].low_latency == 2, res[4].low_latency
        # ranks disagree on the hidden size in a planned call: every rank raises MismatchError
        hid = 32 if r == 1 else 16
        expect(mw.MismatchError, lambda: buf.dispatch(torch.ones(2, hid), idx, w, E), "disagree")
        buf.dispatch(x, idx, w, E)                        # after the error: agreed first
        a = buf.dispatch(x, idx, w, E)
        b = buf.dispatch(x, idx, w, E)
        assert a[4].low_latency == 2 and b[4].low_latency == 2, (a[4].low_latency, b[4].low_latency)
        # combine: wrong rows on one rank -> every rank raises; handles of different dispatches -> too
        y = b[0] if r != 2 else torch.zeros(b[0].shape[0] + 1, 16)
        expect((ValueError, mw.MismatchError), lambda: buf.combine(y, b[4]))
        e = expect(mw.MismatchError, lambda: buf.combine(a[0] if r == 0 else b[0], a[4] if r == 0 else b[4]))
        assert "key" in str(e) or "different" in str(e), str(e)
        out = buf.combine(b[0], b[4])
        assert out.shape == (2, 16)
        # get_combine_buffer works with a low-latency handle (ordinary memory)
        yb = buf.get_combine_buffer(b[4])
        yb.copy_(b[0])
        assert torch.equal(buf.combine(yb, b[4]), out)
        # unicast calls refuse the blocks and take the normal path; results the same
        u = mw.Buffer(mode="unicast").dispatch(x, idx, w, E)
        assert u[4].low_latency == 0 and torch.equal(u[0], b[0])
    print(f"rank {r}: decode OK", flush=True)


if __name__ == "__main__":
    main()
