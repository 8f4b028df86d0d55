"""Multi-process MoE dispatch/combine checks against a reference built from all ranks' inputs
(DeepEP-style tests). Run by tests/test_moe_mp.py under mpirun and torchrun."""
import os
import sys

import numpy as np
import torch

import multiwrite as mw
from multiwrite import _core


def routing(case, rank, T, E, k, P):
    g = torch.Generator().manual_seed(77 + rank)
    if case == "uniform":
        scores = torch.rand(T, E, generator=g)
    elif case == "skewed":      # a few hot experts
        scores = torch.rand(T, E, generator=g) * torch.linspace(0.05, 3.0, E) ** 4
    elif case == "one_node":    # every token to experts of node 0's ranks (ranks 0..1 with L=2)
        scores = torch.rand(T, E, generator=g)
        scores[:, 2 * E // P:] = -1
    elif case == "all_none":
        return torch.full((T, k), -1, dtype=torch.int64), torch.zeros(T, k)
    else:
        raise ValueError(case)
    w, idx = torch.topk(scores, k, dim=1)
    if case == "uniform":       # sprinkle -1 slots
        idx[torch.rand(T, k, generator=g) < 0.1] = -1
    return idx, w.float()


def tokens(rank, T, H, dtype):
    # row t of rank r: value r*1000 + t in column 0, then a rank/token-dependent pattern
    base = torch.arange(T, dtype=torch.float32)[:, None] + 1000 * rank
    cols = torch.arange(H, dtype=torch.float32)[None, :] % 7
    return (base + cols / 8).to(dtype)


def reference(P, E, inputs, me):
    """Rows rank ``me`` must receive: [(src, t)] in (source rank, token) order."""
    per = E // P
    rows = []
    for s, (x, idx, w) in enumerate(inputs):
        for t in range(idx.shape[0]):
            if ((idx[t] >= me * per) & (idx[t] < (me + 1) * per)).any():
                rows.append((s, t))
    return rows


def run_case(buf, case, T, H, E, k, dtype, mode, check_bytes):
    topo = mw.topology()
    P, r = topo.world_size, topo.rank
    g = mw.default_group()
    Ti = 0 if case == "empty" else T + r          # unequal token counts across ranks
    idx, w = routing("uniform" if case == "empty" else case, r, Ti, E, k, P)
    x = tokens(r, Ti, H, dtype)
    inputs = g.transport.allgather_obj((x, idx, w))
    mw.reset_stats()
    recv_x, recv_idx, recv_w, per_expert, handle = buf.dispatch(x, idx, w, E) if mode is None else \
        mw.Buffer(mode=mode).dispatch(x, idx, w, E)
    st = mw.stats()["inter_node"]
    ref = reference(P, E, inputs, r)
    assert recv_x.shape == (len(ref), H), (recv_x.shape, len(ref))
    per = E // P
    exp_x = torch.stack([inputs[s][0][t] for s, t in ref]) if ref else torch.empty(0, H, dtype=dtype)
    assert torch.equal(recv_x.view(torch.int16) if dtype == torch.bfloat16 else recv_x,
                       exp_x.view(torch.int16) if dtype == torch.bfloat16 else exp_x), f"{case}: rows differ"
    for i, (s, t) in enumerate(ref):
        gidx = inputs[s][1][t]
        local = torch.where((gidx >= r * per) & (gidx < (r + 1) * per), gidx - r * per, torch.full_like(gidx, -1))
        assert torch.equal(recv_idx[i], local), (case, i, recv_idx[i], local)
        assert torch.equal(recv_w[i], inputs[s][2][t])
    assert list(handle.recv_src_rank) == [s for s, _ in ref] and list(handle.recv_src_token) == [t for _, t in ref]
    exp_counts = [int(sum(int(((inputs[s][1][t] == r * per + e)).any()) for s, t in ref)) for e in range(per)]
    assert per_expert == exp_counts, (per_expert, exp_counts)
    # layout agrees with an independent count
    layout = buf.get_dispatch_layout(idx, E)
    in_rank = torch.zeros(Ti, P, dtype=torch.bool)
    for t in range(Ti):
        for e in idx[t].tolist():
            if e >= 0:
                in_rank[t, e // per] = True
    assert torch.equal(layout[3], in_rank) and torch.equal(layout[0], in_rank.sum(0))
    # inter-node bytes: MultiWrite = distinct remote nodes per token, unicast = distinct remote ranks
    rec = _core.record_size(H * x.element_size(), k)
    remote_nodes = remote_ranks = 0
    nodes_hit, ranks_hit = set(), set()
    for t in range(Ti):
        ranks = {e // per for e in idx[t].tolist() if e >= 0}
        rr = {d for d in ranks if topo.node_of[d] != topo.node}
        nn = {topo.node_of[d] for d in rr}
        remote_ranks += len(rr)
        remote_nodes += len(nn)
        nodes_hit |= nn
        ranks_hit |= rr
    effective = mode or buf.mode
    # exact bytes of the normal path (test_moe_mp runs this with the low-latency path off too): with it
    # on, a call may move low_latency.py's fixed-size blocks instead, or first try to (test_moe_decode_mp)
    if check_bytes and os.environ.get("MULTIWRITE_DECODE_TOKENS") == "0":
        want = (remote_nodes * rec + 64 * len(nodes_hit)) if effective == "multiwrite" else \
            (remote_ranks * rec + 64 * len(ranks_hit))
        assert st["bytes"] == want, f"{case} {effective}: {st['bytes']} inter-node bytes, expected {want}"
    # combine round trip: each token comes back times its number of distinct destination ranks
    y = (mw.Buffer(mode=mode) if mode else buf).combine(recv_x.float(), handle)
    ndest = in_rank.sum(1).float()[:, None]
    assert torch.allclose(y, x.float() * ndest, rtol=1e-5, atol=1e-3), f"{case}: combine round trip"
    # weighted combine: experts scale by their slot weights
    weights = torch.where(recv_idx >= 0, recv_w, torch.zeros_like(recv_w)).sum(1, keepdim=True)
    yw = (mw.Buffer(mode=mode) if mode else buf).combine(recv_x.float() * weights, handle)
    wsum = torch.where(idx >= 0, w, torch.zeros_like(w)).sum(1, keepdim=True)
    assert torch.allclose(yw, x.float() * wsum, rtol=1e-5, atol=1e-3), f"{case}: weighted combine"
    return recv_x, y, yw, handle


def zero_copy_checks(buf, a, b):
    """get_combine_buffer: expert outputs written in place give the bitwise same combine as passing
    them as an ordinary tensor (both modes, another hidden size/dtype, some ranks only, a buffer that
    grows); reusing the buffer of an earlier combine, or ranks of a node asking for different sizes,
    raise on every rank and the next combine works."""
    topo = mw.topology()
    for recv_x, y_ref, _, handle in (a, b):
        out = buf.get_combine_buffer(handle)
        assert out.shape == recv_x.shape and out.dtype == recv_x.dtype, (out.shape, out.dtype)
        out.copy_(recv_x)
        assert torch.equal(buf.combine(out, handle), y_ref), f"{handle.mode}: zero-copy combine differs"
        if handle.mode == "multiwrite":
            zero_copy = mw.default_group().extension("moe.combine", dict)
            assert out.data_ptr() == zero_copy.last_block    # in the node buffer, not a copy
        # another hidden size and dtype than the dispatched rows; larger: the node buffer grows
        wide = torch.cat([recv_x, -recv_x, recv_x * 0.5], 1).to(torch.bfloat16)
        out = buf.get_combine_buffer(handle, hidden=wide.shape[1], dtype=torch.bfloat16)
        out.copy_(wide)
        want = buf.combine(wide, handle)
        assert want.dtype == torch.bfloat16 and want.shape[1] == wide.shape[1]
        out = buf.get_combine_buffer(handle, hidden=wide.shape[1], dtype=torch.bfloat16)
        out.copy_(wide)
        assert torch.equal(buf.combine(out, handle).view(torch.int16), want.view(torch.int16))
        # only rank 0 writes in place, the others pass their own tensors
        out = buf.get_combine_buffer(handle)
        if topo.rank == 0:
            out.copy_(recv_x)
        assert torch.equal(buf.combine(out if topo.rank == 0 else recv_x.clone(), handle), y_ref)
    # every token to rank 0's experts: rank 0's node peers received no rows, yet take part
    E, k = 4 * topo.world_size, 3
    T = 7 + topo.rank
    x = tokens(topo.rank, T, 16, torch.float32)
    idx = torch.arange(k).repeat(T, 1)
    rx, _, _, _, h = buf.dispatch(x, idx, torch.ones(T, k), E)
    assert (rx.shape[0] > 0) == (topo.rank == 0), rx.shape
    out = buf.get_combine_buffer(h)
    assert out.shape == rx.shape, (out.shape, rx.shape)
    out.copy_(rx)
    assert torch.equal(buf.combine(out, h), x), "zero-copy combine with ranks that received nothing"
    recv_x, y_ref, _, handle = a
    out = buf.get_combine_buffer(handle)
    out.copy_(recv_x)
    buf.combine(out, handle)
    try:                                       # the same tensor again, without get_combine_buffer
        buf.combine(out, handle)
    except ValueError as e:
        assert "earlier combine" in str(e), str(e)
    else:
        raise AssertionError("reuse of a zero-copy combine buffer not reported")
    # the ranks of a node ask for different hidden sizes: ordinary memory, combine raises everywhere
    hid = 32 if topo.rank == 1 else recv_x.shape[1]
    out = buf.get_combine_buffer(handle, hidden=hid)
    try:
        buf.combine(out.zero_(), handle)
    except mw.MismatchError as e:
        assert "disagree" in str(e) and "hidden" in str(e), str(e)
    else:
        raise AssertionError("combine buffers of different sizes not reported")
    out = buf.get_combine_buffer(handle)
    out.copy_(recv_x)
    assert torch.equal(buf.combine(out, handle), y_ref), "zero-copy combine after errors"
    try:
        mw.Buffer(mode="multiwrite").get_combine_buffer(handle, dtype=torch.int32)
    except ValueError as e:
        assert "float32" in str(e), str(e)
    else:
        raise AssertionError("get_combine_buffer with an integer dtype not reported")


def main():
    mw.init()
    topo = mw.topology()
    P = topo.world_size
    buf = mw.Buffer()
    E, k = 4 * P, 3
    for dtype, H in ((torch.float32, 16), (torch.bfloat16, 33), (torch.float16, 8)):
        for case in ("uniform", "skewed", "one_node", "all_none", "empty"):
            for mode in ("multiwrite", "unicast"):
                run_case(buf, case, 12, H, E, k, dtype, mode, check_bytes=True)
    # large enough that packets travel in several pieces with MULTIWRITE_PIECE_KIB=256 (test_moe_mp)
    for mode in ("multiwrite", "unicast"):
        run_case(buf, "uniform", 300, 1024, E, k, torch.float32, mode, check_bytes=False)
    # both modes: identical dispatch, combine within 1e-5, bitwise deterministic
    a = run_case(buf, "uniform", 40, 64, E, k, torch.float32, "multiwrite", False)
    b = run_case(buf, "uniform", 40, 64, E, k, torch.float32, "unicast", False)
    a2 = run_case(buf, "uniform", 40, 64, E, k, torch.float32, "multiwrite", False)
    assert torch.equal(a[0], b[0])
    assert torch.allclose(a[2], b[2], rtol=1e-5, atol=0), (a[2] - b[2]).abs().max()
    assert torch.equal(a[1], a2[1]) and torch.equal(a[2], a2[2]), "combine is not deterministic"
    zero_copy_checks(buf, a, b)
    # cached dispatch reuses the layout
    x2 = tokens(topo.rank, 40 + topo.rank, 64, torch.float32) * 2
    c = buf.dispatch(x2, handle=a[3])
    assert torch.equal(c[0], a[0] * 2)
    # errors: every rank gets one, no hang
    bad_idx = torch.zeros(5, k, dtype=torch.int64)
    if topo.rank == 1:
        bad_idx[2, 1] = E + 5
    try:
        buf.dispatch(torch.zeros(5, 8), bad_idx, torch.zeros(5, k), E)
    except ValueError as e:
        assert f"expert id {E + 5}" in str(e), str(e)
    else:
        raise AssertionError("out-of-range expert not reported")
    for args, text in [((torch.zeros(5, 8), torch.zeros(5, k, dtype=torch.int64), torch.zeros(5, k), E + 1), "multiple"),
                       ((torch.zeros(5, 8), torch.zeros(4, k, dtype=torch.int64), torch.zeros(4, k), E), "rows"),
                       ((torch.zeros(5, 8), torch.zeros(5, k, dtype=torch.int64), torch.zeros(5, k + 1), E), "shape"),
                       ((torch.zeros(5, 8, dtype=torch.int32), torch.zeros(5, k, dtype=torch.int64), None, E), "float32")]:
        try:
            buf.dispatch(*args)
        except ValueError as e:
            assert text in str(e), (text, str(e))
        else:
            raise AssertionError(f"no error for {text}")
    try:
        buf.combine(torch.zeros(a[0].shape[0] + 1, 64), a[3])
    except ValueError as e:
        assert "rows" in str(e)
    else:
        raise AssertionError("combine shape mismatch not reported")
    # a handle used with the wrong shape, or from another group
    try:
        buf.dispatch(torch.zeros(a[3].num_tokens + 1, 64), handle=a[3])
    except ValueError as e:
        assert "the handle was made for" in str(e), str(e)
    else:
        raise AssertionError("cached dispatch with a wrong shape not reported")
    # ranks disagree on the hidden size: every rank already sent its remote packets (before the count
    # table), so every rank must drain them, raise, and leave the group usable
    hid = 16 if topo.rank == 1 else 8
    try:
        buf.dispatch(torch.ones(6, hid), torch.arange(6 * k).reshape(6, k) % E, torch.zeros(6, k), E)
    except mw.MismatchError as e:
        assert "disagree" in str(e) and "row bytes" in str(e), str(e)
    else:
        raise AssertionError("hidden size mismatch not reported")
    c = buf.dispatch(x2, handle=a[3])
    assert torch.equal(c[0], a[0] * 2), "dispatch after errors"
    # ranks disagree on combine's hidden size: the others may already have staged their rows (the
    # agreement travels while they do), yet every rank raises and nothing is sent; the next works
    y_bad = torch.ones(a[0].shape[0], 32 if topo.rank == 1 else 64)
    try:
        buf.combine(y_bad, a[3])
    except mw.MismatchError as e:
        assert "disagree" in str(e) and "hidden" in str(e), str(e)
    else:
        raise AssertionError("combine hidden size mismatch not reported")
    assert torch.equal(buf.combine(a[0], a[3]), a[1]), "combine after a mismatch"
    other = mw.Group(mw.default_group().transport.split(list(range(P))))
    for fn in (lambda: mw.Buffer(group=other).combine(a[0], a[3]),
               lambda: mw.Buffer(group=other).dispatch(a[0][:0], handle=a[3])):
        try:
            fn()
        except ValueError as e:
            assert "another group" in str(e), str(e)
        else:
            raise AssertionError("handle from another group not reported")
    other.close()
    if topo.rank == 0:
        print(f"moe OK: {topo}", flush=True)
    mw.finalize()


if __name__ == "__main__":
    sys.exit(main())
