"""multiwrite._core dispatch: layout, per-node and per-rank plans, record pack / fan-out / unpack,
against independent pure-NumPy references; the plan -> pack -> unpack round trip; every validation
error."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from multiwrite import _core as c

SETTINGS = settings(max_examples=150, deadline=None)


# ---------------------------------------------------------------- random clusters and routings

@st.composite
def clusters(draw):
    """(rank_to_node, local_rank_of) for P ranks: one node, one rank per node, or random unequal,
    non-contiguous groupings; local ranks a permutation of 0..size-1 within each node."""
    P = draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["one", "each", "blocks", "random"]))
    if kind == "one":
        node = np.zeros(P, np.int64)
    elif kind == "each":
        node = rng.permutation(P)
    elif kind == "blocks":
        L = draw(st.integers(1, P))
        node = np.arange(P) // L
    else:
        raw = rng.integers(0, draw(st.integers(1, P)), size=P)
        _, node = np.unique(raw, return_inverse=True)        # ids 0..N-1, unequal sizes, interleaved
        perm = rng.permutation(node.max() + 1)
        node = perm[node]
    local = np.zeros(P, np.int64)
    for n in range(node.max() + 1):
        members = np.flatnonzero(node == n)
        local[members] = rng.permutation(len(members))
    dtype = draw(st.sampled_from([np.int32, np.int64]))
    return node.astype(dtype), local.astype(dtype)


@st.composite
def routings(draw, P):
    """topk_idx [T, k] over E = P * per_rank experts, with -1 slots, repeats and skew."""
    per_rank = draw(st.integers(1, 4))
    E = P * per_rank
    T = draw(st.sampled_from([0, 1, 2, 3, 5, 17, 40]))
    k = draw(st.integers(0, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    skew = draw(st.sampled_from(["uniform", "hot", "local"]))
    if skew == "uniform":
        idx = rng.integers(0, E, size=(T, k))
    elif skew == "hot":        # a few hot experts
        hot = rng.integers(0, E, size=min(E, 2))
        idx = np.where(rng.random((T, k)) < 0.8, rng.choice(hot, size=(T, k)), rng.integers(0, E, size=(T, k)))
    else:                      # experts of one rank
        r = rng.integers(0, P)
        idx = rng.integers(r * per_rank, (r + 1) * per_rank, size=(T, k))
    idx = np.where(rng.random((T, k)) < draw(st.sampled_from([0.0, 0.2, 0.9])), -1, idx)
    return np.ascontiguousarray(idx, dtype=np.int64), E


# ---------------------------------------------------------------- references

def ref_membership(topk, E, P, node):
    T, k = topk.shape
    N = int(node.max()) + 1
    in_rank = np.zeros((T, P), bool)
    in_node = np.zeros((T, N), bool)
    in_expert = np.zeros((T, E), bool)
    for t in range(T):
        for e in topk[t]:
            if e >= 0:
                r = e // (E // P)
                in_expert[t, e] = in_rank[t, r] = in_node[t, node[r]] = True
    return in_rank, in_node, in_expert


def ref_plan(topk, E, node, local):
    P = len(node)
    in_rank, in_node, _ = ref_membership(topk, E, P, node)
    offsets, tokens, bitmaps = [0], [], []
    for n in range(in_node.shape[1]):
        for t in np.flatnonzero(in_node[:, n]):
            tokens.append(t)
            bitmaps.append(sum(1 << int(local[r]) for r in range(P) if node[r] == n and in_rank[t, r]))
        offsets.append(len(tokens))
    return np.array(offsets), np.array(tokens, np.int64), np.array(bitmaps, np.uint64)


def ref_record_size(row_bytes, k):
    up8 = lambda x: (x + 7) // 8 * 8
    return 16 + 8 * k + up8(4 * k) + up8(row_bytes)


def ref_pack(xb, topk, w, tokens, bitmaps):
    rb, k = xb.shape[1], topk.shape[1]
    up8 = lambda b, n: b.ljust((n + 7) // 8 * 8, b"\0")
    out = b""
    for t, b in zip(tokens, bitmaps):
        head = np.int64(t).tobytes() + np.uint64(b).tobytes() + topk[t].tobytes()
        out += head + up8(w[t].tobytes(), 4 * k) + up8(xb[t].tobytes(), rb)
    return out


def random_rows(rng, T, H, dtype):
    if dtype == "bfloat16":                         # bf16 bits, passed as uint16
        return rng.integers(0, 2**16, size=(T, H), dtype=np.uint16)
    if np.dtype(dtype).kind == "f":
        return rng.standard_normal((T, H)).astype(dtype)
    return rng.integers(0, 100, size=(T, H)).astype(dtype)


# ---------------------------------------------------------------- layout and plans

@SETTINGS
@given(st.data())
def test_dispatch_layout_matches_reference(data):
    node, local = data.draw(clusters())
    P = len(node)
    topk, E = data.draw(routings(P))
    per_rank, per_node, per_expert, in_rank = c.dispatch_layout(topk, E, node)
    r_rank, r_node, r_expert = ref_membership(topk, E, P, node)
    assert per_rank.dtype == per_node.dtype == per_expert.dtype == np.int64 and in_rank.dtype == bool
    assert per_rank.shape == (P,) and per_node.shape == (node.max() + 1,) and per_expert.shape == (E,)
    np.testing.assert_array_equal(in_rank, r_rank)
    np.testing.assert_array_equal(per_rank, r_rank.sum(0))
    np.testing.assert_array_equal(per_node, r_node.sum(0))
    np.testing.assert_array_equal(per_expert, r_expert.sum(0))


@SETTINGS
@given(st.data())
def test_plan_dispatch_matches_reference(data):
    node, local = data.draw(clusters())
    topk, E = data.draw(routings(len(node)))
    offsets, tokens, bitmaps = c.plan_dispatch(topk, E, node, local)
    r_off, r_tok, r_bm = ref_plan(topk, E, node, local)
    assert offsets.dtype == tokens.dtype == np.int64 and bitmaps.dtype == np.uint64
    np.testing.assert_array_equal(offsets, r_off)
    np.testing.assert_array_equal(tokens, r_tok)
    np.testing.assert_array_equal(bitmaps, r_bm)


@SETTINGS
@given(st.data())
def test_plan_dispatch_per_rank_matches_reference(data):
    P = data.draw(st.integers(1, 12))
    topk, E = data.draw(routings(P))
    offsets, tokens = c.plan_dispatch_per_rank(topk, E, P)
    in_rank, _, _ = ref_membership(topk, E, P, np.zeros(P, np.int64))
    expect = [np.flatnonzero(in_rank[:, r]) for r in range(P)]
    np.testing.assert_array_equal(offsets, np.concatenate([[0], np.cumsum([len(e) for e in expect])]))
    np.testing.assert_array_equal(tokens, np.concatenate(expect + [np.zeros(0, np.int64)]))


def test_duplicate_experts_count_once():
    topk = np.array([[3, 3, 2, -1]], np.int64)     # experts 2 and 3 both on rank 1 (E=4, P=2)
    per_rank, per_node, per_expert, in_rank = c.dispatch_layout(topk, 4, np.array([0, 0]))
    assert per_rank.tolist() == [0, 1] and per_node.tolist() == [1] and per_expert.tolist() == [0, 0, 1, 1]
    off, tok, bm = c.plan_dispatch(topk, 4, np.array([0, 1]), np.array([0, 0]))
    assert off.tolist() == [0, 0, 1] and tok.tolist() == [0] and bm.tolist() == [1]


def test_plan_errors():
    topk = np.zeros((2, 2), np.int64)
    node = np.array([0, 1, 1])
    local = np.array([0, 0, 1])
    with pytest.raises(ValueError, match="num_experts 4 is not a multiple of the number of ranks 3"):
        c.dispatch_layout(topk, 4, node)
    with pytest.raises(ValueError, match="num_experts must be >= 1, got 0"):
        c.plan_dispatch_per_rank(topk, 0, 1)
    with pytest.raises(ValueError, match="the number of ranks must be >= 1, got 0"):
        c.plan_dispatch_per_rank(topk, 3, 0)
    bad = np.array([[0, 6]], np.int64)
    with pytest.raises(ValueError, match=r"topk_idx\[0, 1\] = 6 is outside \[-1, 6\)"):
        c.dispatch_layout(bad, 6, node)
    with pytest.raises(ValueError, match=r"topk_idx\[0, 0\] = -2 is outside"):
        c.plan_dispatch(np.array([[-2]], np.int64), 3, node, local)
    with pytest.raises(ValueError, match=r"topk_idx\[0, 1\] = 6 is outside"):
        c.plan_dispatch_per_rank(bad, 6, 3)
    with pytest.raises(ValueError, match=r"rank_to_node: node 1 has no rank, node ids must form 0..N-1 \(N = 3\)"):
        c.dispatch_layout(topk, 3, np.array([0, 2, 2]))
    with pytest.raises(ValueError, match=r"rank_to_node\[1\] = -1 is not a node id for 3 ranks"):
        c.dispatch_layout(topk, 3, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"rank_to_node\[0\] = 7 is not a node id"):
        c.plan_dispatch(topk, 3, np.array([7, 0, 1]), local)
    with pytest.raises(ValueError, match="rank_to_node must have dtype int32 or int64, got float64"):
        c.dispatch_layout(topk, 3, np.array([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="rank_to_node must have at least one rank"):
        c.dispatch_layout(topk, 3, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="topk_idx must have dtype int64, got int32"):
        c.dispatch_layout(topk.astype(np.int32), 3, node)
    with pytest.raises(ValueError, match=r"topk_idx must be 2-D, got shape \(4,\)"):
        c.dispatch_layout(topk.ravel(), 3, node)
    with pytest.raises(ValueError, match="topk_idx must be C-contiguous"):
        c.dispatch_layout(np.zeros((4, 4), np.int64)[:, ::2], 3, node)
    with pytest.raises(ValueError, match="local_rank_of has 2 entries, rank_to_node has 3"):
        c.plan_dispatch(topk, 3, node, local[:2])
    with pytest.raises(ValueError, match=r"local_rank_of\[2\] = 64 is outside \[0, 64\)"):
        c.plan_dispatch(topk, 3, node, np.array([0, 0, 64]))
    with pytest.raises(ValueError, match=r"local_rank_of\[2\] = 0 repeats local rank 0 of rank 1 on node 1"):
        c.plan_dispatch(topk, 3, node, np.array([0, 0, 0]))


# ---------------------------------------------------------------- records

@given(st.integers(0, 10_000), st.integers(0, 64))
def test_record_size(row_bytes, k):
    rs = c.record_size(row_bytes, k)
    assert rs == ref_record_size(row_bytes, k) and rs % 8 == 0


def test_record_size_errors():
    with pytest.raises(ValueError, match="row_bytes must be >= 0, got -1"):
        c.record_size(-1, 2)
    with pytest.raises(ValueError, match="k must be >= 0, got -3"):
        c.record_size(8, -3)


@SETTINGS
@given(st.data())
def test_pack_matches_reference_bytes(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    T = data.draw(st.integers(0, 12))
    k = data.draw(st.integers(0, 5))
    rb = data.draw(st.integers(0, 40))
    xb = rng.integers(0, 256, size=(T, rb), dtype=np.uint8)
    topk = rng.integers(-1, 50, size=(T, k)).astype(np.int64)
    w = rng.standard_normal((T, k)).astype(np.float32)
    tokens = np.flatnonzero(rng.random(T) < 0.6).astype(np.int64)
    bitmaps = rng.integers(1, 2**63, size=len(tokens), dtype=np.uint64)
    rs = c.record_size(rb, k)
    out = np.full(len(tokens) * rs + 24, 0xAB, np.uint8)       # poisoned: padding must be zeroed
    assert c.pack_records(xb, topk, w, tokens, bitmaps, out) == len(tokens) * rs
    assert out[:len(tokens) * rs].tobytes() == ref_pack(xb, topk, w, tokens, bitmaps)
    assert (out[len(tokens) * rs:] == 0xAB).all()
    if len(tokens):
        counts = c.fanout_counts(out[:len(tokens) * rs], rb, k, 64)
        np.testing.assert_array_equal(counts, [(bitmaps >> np.uint64(l) & np.uint64(1)).sum() for l in range(64)])


def _records(T=4, rb=8, k=2, tokens=(0, 2), bitmaps=(1, 3)):
    xb = np.arange(T * rb, dtype=np.uint8).reshape(T, rb)
    topk = np.arange(T * k, dtype=np.int64).reshape(T, k)
    w = np.ones((T, k), np.float32)
    tok = np.array(tokens, np.int64)
    bm = np.array(bitmaps, np.uint64)
    out = np.zeros(len(tok) * c.record_size(rb, k), np.uint8)
    c.pack_records(xb, topk, w, tok, bm, out)
    return xb, topk, w, tok, bm, out


def test_pack_errors():
    xb, topk, w, tok, bm, out = _records()
    with pytest.raises(ValueError, match=r"token_idx\[1\] = 4 is outside \[0, 4\)"):
        c.pack_records(xb, topk, w, np.array([0, 4]), bm, out)
    with pytest.raises(ValueError, match=r"token_idx\[1\] = 0 does not follow 0 \(must be strictly increasing\)"):
        c.pack_records(xb, topk, w, np.array([0, 0]), bm, out)
    with pytest.raises(ValueError, match=r"rank_bitmap\[1\] is 0 \(token 2 has no destination\)"):
        c.pack_records(xb, topk, w, tok, np.array([1, 0], np.uint64), out)
    with pytest.raises(ValueError, match="out has 79 bytes, 2 records of 48 bytes need 96"):
        c.pack_records(xb, topk, w, tok, bm, out[:79])
    with pytest.raises(ValueError, match="rank_bitmap has 1 entries, token_idx has 2"):
        c.pack_records(xb, topk, w, tok, bm[:1], out)
    with pytest.raises(ValueError, match="topk_idx has 3 rows, x has 4"):
        c.pack_records(xb, topk[:3], w, tok, bm, out)
    with pytest.raises(ValueError, match=r"topk_weights has shape \(4, 1\), expected \(4, 2\)"):
        c.pack_records(xb, topk, np.ascontiguousarray(w[:, :1]), tok, bm, out)
    with pytest.raises(ValueError, match="topk_weights must have dtype float32, got float64"):
        c.pack_records(xb, topk, w.astype(np.float64), tok, bm, out)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        c.pack_records(np.zeros((4, 16), np.uint8)[:, ::2], topk, w, tok, bm, out)
    with pytest.raises(ValueError, match="x must have dtype uint8, got float32"):
        c.pack_records(xb.view(np.float32), topk, w, tok, bm, out)
    with pytest.raises(ValueError, match="rank_bitmap must have dtype uint64, got int64"):
        c.pack_records(xb, topk, w, tok, bm.astype(np.int64), out)
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        c.pack_records(xb, topk, w, tok, bm, ro)


def _unpack(buf, C=4, rb=8, k=2, local_rank=0, start=0, **kw):
    ox = np.zeros((C, rb), np.uint8)
    os_ = np.zeros(C, np.int64)
    oi = np.zeros((C, k), np.int64)
    ow = np.zeros((C, k), np.float32)
    n = c.unpack_records(buf, rb, k, local_rank, 0, 4, ox, os_, oi, ow, start, **kw)
    return n, ox, os_, oi, ow


def test_fanout_and_unpack_buffer_errors():
    xb, topk, w, tok, bm, out = _records()
    rs = c.record_size(8, 2)
    assert c.fanout_counts(out, 8, 2, 2).tolist() == [2, 1]
    for fn in (lambda b: c.fanout_counts(b, 8, 2, 2), lambda b: _unpack(b)):
        with pytest.raises(c.PacketError, match=r"record buffer of 79 bytes is not a whole number of 48-byte records "
                                                r"\(31 trailing bytes; row_bytes 8, k 2\)"):
            fn(out[:79])
        bad = out.copy()
        bad[rs:rs + 8] = np.frombuffer(np.int64(0).tobytes(), np.uint8)
        with pytest.raises(c.PacketError, match=r"record 1: src_token 0 does not follow 0 \(records must be in "
                                                r"increasing src_token order\)"):
            fn(bad)
        bad[rs:rs + 8] = np.frombuffer(np.int64(-5).tobytes(), np.uint8)
        with pytest.raises(c.PacketError, match="record 1: src_token -5 is negative"):
            fn(bad)
        bad = out.copy()
        bad[8:16] = 0
        with pytest.raises(c.PacketError, match=r"record 0 \(src_token 0\): empty destination bitmap"):
            fn(bad)
    bad = out.copy()
    bad[rs + 8:rs + 16] = np.frombuffer(np.uint64(4).tobytes(), np.uint8)
    with pytest.raises(c.PacketError, match=r"record 1 \(src_token 2\): bitmap 0x4 names local rank 2 but the node "
                                            r"has 2 local ranks"):
        c.fanout_counts(bad, 8, 2, 2)
    with pytest.raises(c.PacketError, match="bitmap 0x4 names local rank 2"):
        _unpack(bad, num_local_ranks=2)
    with pytest.raises(ValueError, match=r"num_local_ranks must be in \[1, 64\], got 0"):
        c.fanout_counts(out, 8, 2, 0)
    with pytest.raises(ValueError, match="buf must have dtype uint8, got int64"):
        c.fanout_counts(out.view(np.int64), 8, 2, 2)


def test_unpack_argument_errors():
    xb, topk, w, tok, bm, out = _records()
    n, ox, os_, oi, ow = _unpack(out)
    assert n == 2 and os_[:2].tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"outputs have room for 1 rows from row 3, the buffer holds 2 records for "
                                         r"local rank 0"):
        _unpack(out, start=3)
    with pytest.raises(ValueError, match=r"start 5 is outside \[0, 4\]"):
        _unpack(out, start=5)
    with pytest.raises(ValueError, match=r"local_rank 64 is outside \[0, 64\)"):
        _unpack(out, local_rank=64)
    with pytest.raises(ValueError, match=r"local_rank 2 is outside \[0, 2\)"):
        _unpack(out, local_rank=2, num_local_ranks=2)
    ox = np.zeros((4, 8), np.uint8)
    os_ = np.zeros(4, np.int64)
    oi = np.zeros((4, 2), np.int64)
    ow = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="expert_begin 5 > expert_end 4"):
        c.unpack_records(out, 8, 2, 0, 5, 4, ox, os_, oi, ow)
    with pytest.raises(ValueError, match="out_x has rows of 8 bytes, row_bytes is 9"):
        c.unpack_records(out, 9, 2, 0, 0, 4, ox, os_, oi, ow)
    with pytest.raises(ValueError, match="out_src_token has 3 rows, out_x has 4"):
        c.unpack_records(out, 8, 2, 0, 0, 4, ox, os_[:3], oi, ow)
    with pytest.raises(ValueError, match=r"out_topk_idx has shape \(4, 1\), expected \(4, 2\)"):
        c.unpack_records(out, 8, 2, 0, 0, 4, ox, os_, np.zeros((4, 1), np.int64), ow)
    with pytest.raises(ValueError, match=r"out_topk_weights has shape \(3, 2\), expected \(4, 2\)"):
        c.unpack_records(out, 8, 2, 0, 0, 4, ox, os_, oi, ow[:3])
    with pytest.raises(ValueError, match="out_topk_weights must have dtype float32, got float64"):
        c.unpack_records(out, 8, 2, 0, 0, 4, ox, os_, oi, ow.astype(np.float64))
    ro = ox.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out_x must be writeable"):
        c.unpack_records(out, 8, 2, 0, 0, 4, ro, os_, oi, ow)
    with pytest.raises(ValueError, match="out_x must be C-contiguous"):
        c.unpack_records(out, 8, 2, 0, 0, 4, np.zeros((4, 16), np.uint8)[:, ::2], os_, oi, ow)


def test_fanout_positions_errors_and_small_case():
    pos = c.fanout_positions(np.array([1, 3, 2, 1], np.uint64), 2)
    assert pos.tolist() == [[0, -1], [1, 0], [-1, 1], [2, -1]]
    assert c.fanout_positions(np.zeros(0, np.uint64), 3).shape == (0, 3)
    with pytest.raises(ValueError, match=r"rank_bitmap\[1\] is 0"):
        c.fanout_positions(np.array([1, 0], np.uint64), 2)
    with pytest.raises(ValueError, match=r"rank_bitmap\[0\] = 0x4 names local rank 2 >= num_local_ranks 2"):
        c.fanout_positions(np.array([4], np.uint64), 2)
    with pytest.raises(ValueError, match=r"num_local_ranks must be in \[1, 64\], got 65"):
        c.fanout_positions(np.array([4], np.uint64), 65)


# ---------------------------------------------------------------- the round trip

@settings(max_examples=100, deadline=None)
@given(st.data(), st.sampled_from([np.float32, np.float16, "bfloat16", np.float64, np.int8, np.uint8]),
       st.sampled_from([1, 3, 7, 16, 33]))
def test_round_trip_plan_pack_unpack(data, dtype, H):
    """Every rank gets exactly the rows, source tokens, local expert ids and weights it must receive,
    in source-token order, whatever the cluster shape and routing."""
    node, local = data.draw(clusters())
    P = len(node)
    topk, E = data.draw(routings(P))
    T, k = topk.shape
    per_rank = E // P
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = random_rows(rng, T, H, dtype)
    xb = x.view(np.uint8).reshape(T, H * x.itemsize)
    rb = xb.shape[1]
    w = rng.standard_normal((T, k)).astype(np.float32)
    in_rank, _, _ = ref_membership(topk, E, P, node)

    offsets, tokens, bitmaps = c.plan_dispatch(topk, E, node, local)
    rs = c.record_size(rb, k)
    for n in range(len(offsets) - 1):
        sel = slice(offsets[n], offsets[n + 1])
        buf = np.empty(int(offsets[n + 1] - offsets[n]) * rs, np.uint8)
        assert c.pack_records(xb, topk, w, tokens[sel], bitmaps[sel], buf) == buf.nbytes
        L = int((node == n).sum())
        counts = c.fanout_counts(buf, rb, k, L)
        pos = c.fanout_positions(bitmaps[sel], L)
        for r in np.flatnonzero(node == n):
            lr = int(local[r])
            want = np.flatnonzero(in_rank[:, r])
            assert counts[lr] == len(want)
            start = int(rng.integers(0, 3))
            C = start + len(want) + 1                       # one spare row must stay untouched
            ox = np.full((C, rb), 0xCD, np.uint8)
            os_ = np.full(C, -7, np.int64)
            oi = np.full((C, k), -7, np.int64)
            ow = np.full((C, k), -7, np.float32)
            got = c.unpack_records(buf, rb, k, lr, r * per_rank, (r + 1) * per_rank, ox, os_, oi, ow, start,
                                   num_local_ranks=L)
            assert got == len(want)
            rows = slice(start, start + got)
            np.testing.assert_array_equal(os_[rows], want)
            np.testing.assert_array_equal(ox[rows], xb[want])
            np.testing.assert_array_equal(ox[rows].view(x.dtype).reshape(got, H), x[want])
            mine = (topk[want] >= r * per_rank) & (topk[want] < (r + 1) * per_rank)
            np.testing.assert_array_equal(oi[rows], np.where(mine, topk[want] - r * per_rank, -1))
            np.testing.assert_array_equal(ow[rows], w[want])
            for other in (slice(0, start), slice(start + got, C)):
                assert (ox[other] == 0xCD).all() and (os_[other] == -7).all() and (oi[other] == -7).all()
            # fanout_positions finds each record's row in this rank's output
            has = pos[:, lr] >= 0
            np.testing.assert_array_equal(os_[start + pos[has, lr]], tokens[sel][has])
            assert has.sum() == got


@pytest.mark.parametrize("row_bytes", [8192, 8195, 4100])
def test_large_buffers_take_the_streaming_path(row_bytes):
    """> 8 MiB packs and unpacks use non-temporal copies; odd row sizes misalign them."""
    rng = np.random.default_rng(row_bytes)
    k = 3
    M = (9 << 20) // row_bytes + 1
    T = 2 * M
    xb = rng.integers(0, 256, size=(T, row_bytes), dtype=np.uint8)
    topk = rng.integers(-1, 8, size=(T, k)).astype(np.int64)
    w = rng.standard_normal((T, k)).astype(np.float32)
    tokens = np.sort(rng.choice(T, size=M, replace=False)).astype(np.int64)
    bitmaps = rng.integers(0, 4, size=M).astype(np.uint64) | np.uint64(1)
    rs = c.record_size(row_bytes, k)
    out = np.full(M * rs + 1, 0xAB, np.uint8)[1:]                 # an odd start address
    assert c.pack_records(xb, topk, w, tokens, bitmaps, out) == M * rs
    recs = out.reshape(M, rs)
    np.testing.assert_array_equal(recs[:, :8].copy().view(np.int64)[:, 0], tokens)
    np.testing.assert_array_equal(recs[:, rs - (row_bytes + 7) // 8 * 8:][:, :row_bytes], xb[tokens])
    assert (recs[:, rs - (row_bytes + 7) // 8 * 8 + row_bytes:] == 0).all()
    for lr in (0, 1):
        want = tokens[(bitmaps >> np.uint64(lr)) & np.uint64(1) == 1]
        n = len(want)
        ox = np.zeros((n + 1, row_bytes), np.uint8)
        os_ = np.zeros(n + 1, np.int64)
        oi = np.zeros((n + 1, k), np.int64)
        ow = np.zeros((n + 1, k), np.float32)
        assert c.unpack_records(out, row_bytes, k, lr, 0, 8, ox, os_, oi, ow, 1) == n
        np.testing.assert_array_equal(os_[1:], want)
        np.testing.assert_array_equal(ox[1:], xb[want])
        np.testing.assert_array_equal(ow[1:], w[want])
        assert (ox[0] == 0).all()
