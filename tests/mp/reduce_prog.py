"""Multi-process checks of multiwrite's reductions (multiwrite/ops/reduce.py), through the "multiwrite"
torch.distributed backend and mw's own API, against Gloo's own reductions in the same run.

    <launcher> reduce_prog.py [section ...]      sections: values bytes mismatch digest timeout (default:
                                                 values bytes mismatch digest)

* values    every ReduceOp x dtype (float16/32/64, bfloat16, int8/16/32/64, uint8, bool, complex64) x
            size (0, 1, 7, 1000 elements; 1000003 for some) for all_reduce, reduce_scatter_tensor (and the
            list form), reduce, all_reduce_coalesced, non-contiguous tensors and numpy arrays. Every
            result must be bitwise equal to the documented order (reduced over each node's ranks in local
            order, then over the nodes in node order, computed here from every rank's input), so
            identical on every rank; integer, bool, MIN/MAX and bitwise results bitwise equal to Gloo's;
            floating SUM/AVG/PRODUCT within the rounding bound of a float64 reference and of Gloo's.
            Unsupported combinations raise TypeError/ValueError on every rank.
* bytes     exact inter-node bytes per node from mw.stats() for all_reduce, reduce and reduce_scatter.
* mismatch  numel, dtype, op, root and size-0 disagreements across ranks: MismatchError on every rank,
            naming the op and what differs; the group stays usable.
* digest    a SHA-256 of many floating reductions (printed: two launches must print the same) and the
            same calls twice in one run, bitwise equal.
* timeout   rank P-1 skips an all_reduce: the others raise MultiwriteTimeout (MULTIWRITE_TIMEOUT small).
"""
import hashlib
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from backend_common import Timer, as_bits, group_of, init, launcher, log, mw

R = dist.ReduceOp
OPS = [R.SUM, R.AVG, R.PRODUCT, R.MIN, R.MAX, R.BAND, R.BOR, R.BXOR]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
          torch.int64, torch.uint8, torch.bool, torch.complex64]
SIZES = [0, 1, 7, 1000]
BIG = 1000003                      # elements of the large all_reduce cases (4 MB of float32)
DETAIL = os.environ.get("TORCH_DISTRIBUTED_DEBUG", "").upper() == "DETAIL"
COUNTS = {"exact": 0, "gloo_bitwise": 0, "gloo_close": 0, "rejected": 0, "bytes": 0, "mismatch": 0}


def name(op):
    return str(getattr(op, "op", op)).split(".")[-1]


def is_float(dtype):
    return dtype.is_floating_point or dtype.is_complex


def valid(dtype, op):
    if op in (R.BAND, R.BOR, R.BXOR):
        return not is_float(dtype)
    if op == R.AVG:
        return is_float(dtype)
    if dtype.is_complex:
        return op in (R.SUM, R.AVG)
    return True


def gloo_supports(dtype, op):
    return dtype != torch.int16


def data(n, dtype, seed, op):
    """Rank-specific deterministic data (any rank can make any rank's: seed includes the rank)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) > 0.5
    if dtype.is_complex:
        return torch.complex(torch.randn(n, generator=g), torch.randn(n, generator=g)).to(dtype)
    if dtype.is_floating_point:
        if op == R.PRODUCT:
            return (0.5 + torch.rand(n, generator=g)).to(dtype)
        return (torch.randn(n, generator=g) * 4).to(dtype)
    info = torch.iinfo(dtype)
    if op == R.PRODUCT:
        return torch.randint(1, 4, (n,), generator=g).to(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000) + 1, (n,), generator=g).to(dtype)


_FN = {R.SUM: torch.add, R.AVG: torch.add, R.PRODUCT: torch.mul, R.MIN: torch.minimum, R.MAX: torch.maximum,
       R.BAND: torch.bitwise_and, R.BOR: torch.bitwise_or, R.BXOR: torch.bitwise_xor}


def fold(parts, op, divide=0):
    """The documented reduction of one step, left to right (float16/bfloat16 SUM/AVG/PRODUCT in float32,
    rounded once)."""
    dtype = parts[0].dtype
    wide = dtype in (torch.float16, torch.bfloat16) and op in (R.SUM, R.AVG, R.PRODUCT)
    acc = parts[0].float() if wide else parts[0].clone()
    for p in parts[1:]:
        acc = _FN[op](acc, p)
    if divide:                # complex: real and imaginary parts divided each
        (torch.view_as_real(acc) if acc.is_complex() else acc).div_(divide)
    return acc.to(dtype)


def expected(inputs, op):
    """The documented order: over each node's ranks in local order, then over the nodes in order."""
    topo = TOPO
    partials = [fold([inputs[r] for r in ranks], op) for ranks in topo.node_ranks]
    return fold(partials, op, divide=P if op == R.AVG else 0)


def float64_bound(inputs, op, ref):
    """|error| bound of a floating SUM/AVG/PRODUCT of P values in the dtype (two rounding stages of at
    most P - 1 roundings each, float32 within a half-type step)."""
    u = torch.finfo(inputs[0].real.dtype if inputs[0].is_complex() else inputs[0].dtype).eps
    if op == R.PRODUCT:
        return 4 * P * u * ref.abs() + 1e-30
    mag = sum(x.to(torch.complex128 if x.is_complex() else torch.float64).abs() for x in inputs)
    return 4 * P * u * mag / (P if op == R.AVG else 1) + 1e-30


def check_value(mine, inputs, op, what, want=None, gloo=None):
    """mine must be bitwise the documented order's value; vs Gloo: bitwise (exact ops) or within rounding."""
    want = expected(inputs, op) if want is None else want
    assert mine.dtype == want.dtype and mine.shape == want.shape, f"{what}: {mine.dtype} {mine.shape}"
    assert torch.equal(as_bits(mine), as_bits(want)), \
        f"{what}: not the documented order's value:\n{mine[:8]}\nvs\n{want[:8]}"
    COUNTS["exact"] += 1
    order_dependent = is_float(mine.dtype) and op in (R.SUM, R.AVG, R.PRODUCT)
    if order_dependent:
        wide = torch.complex128 if mine.is_complex() else torch.float64
        ref = [x.to(wide) for x in inputs]
        ref = sum(ref) / (P if op == R.AVG else 1) if op != R.PRODUCT else torch.stack(ref).prod(0)
        bound = float64_bound(inputs, op, ref)
        err = (mine.to(wide) - ref).abs()
        assert bool((err <= bound).all()), f"{what}: error {err.max()} beyond the rounding bound"
    if gloo is not None:
        if order_dependent:
            bound = 2 * float64_bound(inputs, op, gloo.to(torch.complex128 if gloo.is_complex() else torch.float64))
            wide = torch.complex128 if mine.is_complex() else torch.float64
            assert bool(((mine.to(wide) - gloo.to(wide)).abs() <= bound).all()), f"{what}: far from Gloo's"
            COUNTS["gloo_close"] += 1
        else:
            assert torch.equal(as_bits(mine), as_bits(gloo)), f"{what}: differs from Gloo:\n{mine[:8]}\nvs\n{gloo[:8]}"
            COUNTS["gloo_bitwise"] += 1


def dense(t):
    """A fresh contiguous copy (``contiguous()`` keeps a 1-element view's stride of 2)."""
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


def noncontig(t):
    """A stride-2 view holding t's values (and the pair tensor behind it)."""
    pair = torch.stack([t, torch.zeros_like(t)], dim=-1)
    return pair[..., 0], pair


# -- values ---------------------------------------------------------------------------------------------
def section_values():
    case = 0
    for dtype in DTYPES:
        for op in OPS:
            what0 = f"{dtype} {name(op)}"
            if not valid(dtype, op):
                for fn in (lambda: dist.all_reduce(torch.ones(3, dtype=dtype), op=op),
                           lambda: mw.all_reduce(torch.ones(3, dtype=dtype), op=op)):
                    try:
                        fn()
                    except (TypeError, ValueError) as exc:
                        assert name(op) in str(exc) or "AVG" in str(exc) or "complex" in str(exc), str(exc)
                        COUNTS["rejected"] += 1
                    else:
                        raise AssertionError(f"{what0}: unsupported combination accepted")
                continue
            sizes = SIZES + ([BIG] if (dtype, op) in BIG_CASES else [])
            for n in sizes:
                case += 1
                seed = 1000 * case
                inputs = [data(n, dtype, seed + r, op) for r in range(P)]
                mine = inputs[RANK].clone()
                what = f"all_reduce {what0} n={n}"
                layout = case % 3
                if layout == 0:
                    dist.all_reduce(mine, op=op)
                elif layout == 1:
                    mw.all_reduce(mine, op=op)
                else:                                        # non-contiguous, through the backend
                    view, pair = noncontig(inputs[RANK].clone())
                    dist.all_reduce(view, op=op, async_op=True).wait()
                    assert not bool(pair[..., 1].any()), f"{what}: wrote outside the view"
                    mine = dense(view)
                gloo = None
                if gloo_supports(dtype, op):
                    gloo = inputs[RANK].clone()
                    dist.all_reduce(gloo, op=op, group=GLOO)
                want = expected(inputs, op)
                check_value(mine, inputs, op, what, want, gloo)
                DIGEST.update(as_bits(mine).numpy().tobytes())
                # reduce to a root (the others' tensors unchanged)
                root = case % P
                t = inputs[RANK].clone()
                dist.reduce(t, root, op=op) if layout != 1 else mw.reduce(t, root, op=op)
                if RANK == root:
                    check_value(t, inputs, op, f"reduce {what0} n={n} root={root}", want)
                else:
                    assert torch.equal(as_bits(t), as_bits(inputs[RANK])), "reduce: non-root tensor changed"
                if n > 100000:
                    continue
                # reduce_scatter_tensor: P chunks of n elements
                ins = [data(P * n, dtype, seed + 500 + r, op) for r in range(P)]
                full = expected(ins, op)
                out = torch.empty(n, dtype=dtype)
                what = f"reduce_scatter {what0} c={n}"
                if layout == 0:
                    dist.reduce_scatter_tensor(out, ins[RANK], op=op)
                elif layout == 1:
                    mw.reduce_scatter(out, ins[RANK], op=op)
                else:
                    o, pair = noncontig(torch.empty(n, dtype=dtype))
                    i, _ = noncontig(ins[RANK])
                    dist.reduce_scatter_tensor(o, i, op=op, async_op=True).wait()
                    out = dense(o)
                gloo = None
                if gloo_supports(dtype, op):
                    gloo = torch.empty(n, dtype=dtype)
                    dist.reduce_scatter_tensor(gloo, ins[RANK], op=op, group=GLOO)
                check_value(out, [x[RANK * n:(RANK + 1) * n] for x in ins], op, what, full[RANK * n:(RANK + 1) * n],
                            gloo)
    # the list forms, coalesced, numpy
    for dtype, op in ((torch.float32, R.SUM), (torch.bfloat16, R.AVG), (torch.int64, R.BXOR), (torch.bool, R.SUM),
                      (torch.float16, R.MAX)):
        case += 1
        sizes = (3, 0, 1000, 7)
        inputs = [[data(n, dtype, 7000 * case + 10 * r + i, op) for i, n in enumerate(sizes)] for r in range(P)]
        mine = [t.clone() for t in inputs[RANK]]
        dist.all_reduce_coalesced(mine, op=op)
        for i in range(len(sizes)):
            check_value(mine[i], [inputs[r][i] for r in range(P)], op, f"all_reduce_coalesced {dtype} {name(op)} #{i}")
        lists = [[data(5, dtype, 8000 * case + 10 * r + d, op) for d in range(P)] for r in range(P)]
        out = torch.empty(5, dtype=dtype)
        dist.reduce_scatter(out, [t.clone() for t in lists[RANK]], op=op)
        check_value(out, [lists[r][RANK] for r in range(P)], op, f"reduce_scatter(list) {dtype} {name(op)}")
    for npdtype, op in ((np.float32, "sum"), (np.int32, "max"), (np.float64, "avg"), (np.uint8, "bxor")):
        case += 1
        inputs = [torch.from_numpy(data(11, torch.from_numpy(np.zeros(1, npdtype)).dtype, 9000 + 10 * case + r,
                                        getattr(R, op.upper())).numpy()) for r in range(P)]
        arr = inputs[RANK].numpy().copy()
        assert mw.all_reduce(arr, op=op) is arr
        check_value(torch.from_numpy(arr), inputs, getattr(R, op.upper()), f"numpy all_reduce {npdtype.__name__} {op}")
        out = np.empty(2, dtype=npdtype)
        ins = [torch.from_numpy(data(2 * P, torch.from_numpy(np.zeros(1, npdtype)).dtype, 9500 + 10 * case + r,
                                     getattr(R, op.upper())).numpy()) for r in range(P)]
        mw.reduce_scatter(out, ins[RANK].numpy(), op=op)
        full = expected(ins, getattr(R, op.upper()))
        check_value(torch.from_numpy(out), [x[2 * RANK:2 * RANK + 2] for x in ins], getattr(R, op.upper()),
                    f"numpy reduce_scatter {npdtype.__name__} {op}", full[2 * RANK:2 * RANK + 2])
    # bitwise identical on every rank (the all_reduce results)
    digests = [None] * P
    dist.all_gather_object(digests, DIGEST.hexdigest(), group=GLOO)
    assert len(set(digests)) == 1, f"all_reduce results differ between ranks: {digests}"


BIG_CASES = {(torch.float32, R.SUM), (torch.float32, R.AVG), (torch.bfloat16, R.SUM), (torch.int64, R.SUM),
             (torch.float16, R.MAX), (torch.uint8, R.BXOR)}


# -- bytes ----------------------------------------------------------------------------------------------
def node_bytes(g):
    rows = [None] * P
    dist.all_gather_object(rows, (g.topo.node, g.stats.inter_bytes), group=GLOO)
    sent = [0] * g.topo.num_nodes
    for node, b in rows:
        sent[node] += b
    return sent


def pieces(length, s, single=True):
    """Pieces a packet of ``length`` elements of ``s`` bytes travels in (ops/reduce.py _cuts): on MPI
    about a quarter of MULTIWRITE_PIECE_KIB each, at most 16; one on Gloo and for packets of several
    units."""
    g = group_of()
    piece = g.piece_bytes // 4
    if not single or g.transport.exact_size_recv or length * s <= piece:
        return 1
    return min(16, -(-length * s // piece))


def all_reduce_bytes(topo, n, s):
    """Inter-node bytes per node of an all_reduce of n elements of s bytes (module doc of ops/reduce.py):
    per packet piece 64 bytes; phase 1 carries unit (j, k) from node m to node k, phase 2 unit (j, m)
    back."""
    N = topo.num_nodes
    sizes = [len(r) for r in topo.node_ranks]
    J = max(sizes)
    equal = len(set(sizes)) == 1

    def unit(j, k):
        lo, hi = n * j // J, n * (j + 1) // J
        return (hi - lo) * (k + 1) // N - (hi - lo) * k // N

    out = []
    for m in range(N):
        total = 0
        for i in range(sizes[m]):
            js = range(i, J, sizes[m])
            for k in range(N):
                if k == m:
                    continue
                peers = {}
                for j in js:
                    peers.setdefault(j % sizes[k], []).append(j)
                for jl in peers.values():
                    out1, out2 = sum(unit(j, k) for j in jl), sum(unit(j, m) for j in jl)
                    single = equal and len(jl) == 1
                    total += 64 * pieces(out1, s, single) + s * out1       # phase 1: partials
                    total += 64 * pieces(out2, s, single) + s * out2       # phase 2: results
        # the same in closed form: n + (N - 2) * (elements of the units node m owns), in bytes
        own = sum(unit(j, m) for j in range(J))
        packets = (total - s * (n + (N - 2) * own)) if N > 1 else 0
        assert N == 1 or (packets % 64 == 0 and packets // 64 >= 2 * (N - 1)), (packets, total)
        out.append(total)
    return out


def section_bytes():
    g = group_of()
    topo = g.topo
    N = topo.num_nodes
    for dtype in (torch.float32, torch.bfloat16, torch.uint8):
        s = torch.empty(0, dtype=dtype).element_size()
        for n in (0, 1, 7, 1000, BIG):
            x = data(n, dtype, 42 + RANK, R.SUM)
            for coll in ("all_reduce", "reduce"):
                g.stats.reset()
                if coll == "all_reduce":
                    dist.all_reduce(x.clone())
                else:
                    dist.reduce(x.clone(), P - 1)
                sent = node_bytes(g)
                want = all_reduce_bytes(topo, n, s)
                assert sent == want, f"{coll} {dtype} n={n}: inter-node bytes per node {sent}, expected {want}"
                if N == 2 and len(set(len(r) for r in topo.node_ranks)) == 1 and pieces(n // 4, s) == 1:
                    L = topo.local_size       # 1.0 x the buffer per node at N = 2, plus L packets per phase
                    assert want == [n * s + 2 * L * 64] * 2, want
                COUNTS["bytes"] += 1
            c = n // P if n > 1000 else n
            g.stats.reset()
            out = torch.empty(c, dtype=dtype)
            dist.reduce_scatter_tensor(out, data(P * c, dtype, 43 + RANK, R.SUM))
            sent = node_bytes(g)
            want = [(P - len(topo.node_ranks[m])) * (c * s + 64 * pieces(c, s)) for m in range(N)]
            assert sent == want, f"reduce_scatter {dtype} c={c}: inter-node bytes per node {sent}, expected {want}"
            COUNTS["bytes"] += 1
    n = BIG
    ar = all_reduce_bytes(topo, n, 4)
    ring = 2 * (P - 1) / P * n * 4
    log(f"inter-node bytes per node, all_reduce of {n} float32 ({n * 4} B): {ar} "
        f"({max(ar) / (n * 4):.3f} x the buffer; a ring over the ranks: {ring / (n * 4):.3f} x on its boundary links), "
        f"reduce_scatter: {[(P - len(topo.node_ranks[m])) * ((n // P) * 4 + 64) for m in range(N)]}")


# -- mismatches -----------------------------------------------------------------------------------------
def expect_mismatch(what, fn, words):
    """fn() must raise MismatchError on every rank naming ``words``; then the group must still work."""
    try:
        fn()
        err = None
    except mw.MismatchError as exc:
        err = exc
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{what}: raised {type(exc).__name__} instead of MismatchError: {exc}") from exc
    flags = [None] * P
    dist.all_gather_object(flags, err is not None, group=GLOO)
    assert all(flags), f"{what}: MismatchError on ranks {[r for r in range(P) if flags[r]]} only"
    msg = str(err)
    if DETAIL:          # the backend's own argument check raised first: it names the op and the arguments
        words = words[:1]
    for w in words:
        assert w in msg, f"{what}: the error does not say {w!r}: {msg}"
    if RANK == 0:
        log(f"{what}: {msg[:400]}")
    COUNTS["mismatch"] += 1
    t = torch.full((5,), float(RANK + 1))
    dist.all_reduce(t)
    assert torch.equal(t, torch.full((5,), float(P * (P + 1) // 2))), f"{what}: group unusable afterwards"


def section_mismatch():
    last = P - 1
    expect_mismatch("all_reduce numel (2 on rank 0, 3 elsewhere)",
                    lambda: dist.all_reduce(torch.ones(2 if RANK == 0 else 3)), ["all_reduce", "2", "3"])
    expect_mismatch("all_reduce numel (0 on the last rank, 5 elsewhere)",
                    lambda: dist.all_reduce(torch.ones(0 if RANK == last else 5)), ["all_reduce"])
    expect_mismatch("all_reduce numel (200000 vs 200001)",
                    lambda: dist.all_reduce(torch.ones(200001 if RANK == 1 else 200000)), ["all_reduce", "200001"])
    expect_mismatch("all_reduce numel (4096 on rank 0, 400000 elsewhere: pieces differ)",
                    lambda: dist.all_reduce(torch.ones(4096 if RANK == 0 else 400000)), ["all_reduce", "4096"])
    expect_mismatch("reduce_scatter_tensor numel (100000 vs 3000 per rank: pieces differ)",
                    lambda: dist.reduce_scatter_tensor(torch.empty(100000 if RANK == last else 3000),
                                                       torch.ones(P * (100000 if RANK == last else 3000))),
                    ["reduce_scatter", "100000"])
    expect_mismatch("all_reduce dtype (float64 on rank 1)",
                    lambda: dist.all_reduce(torch.ones(4, dtype=torch.float64 if RANK == 1 else torch.float32)),
                    ["all_reduce", "float64", "float32"])
    expect_mismatch("all_reduce dtype (int32 vs float32, same size)",
                    lambda: dist.all_reduce(torch.ones(4, dtype=torch.int32 if RANK == last else torch.float32)),
                    ["all_reduce", "int32", "float32"])
    expect_mismatch("all_reduce op (MAX on rank 2 % P)",
                    lambda: dist.all_reduce(torch.ones(6), op=R.MAX if RANK == 2 % P else R.SUM),
                    ["all_reduce", "MAX", "SUM"])
    expect_mismatch("reduce_scatter_tensor numel (2 vs 3 per rank)",
                    lambda: dist.reduce_scatter_tensor(torch.empty(2 if RANK == last else 3),
                                                       torch.ones(P * (2 if RANK == last else 3))),
                    ["reduce_scatter", "2", "3"])
    expect_mismatch("reduce_scatter_tensor op",
                    lambda: dist.reduce_scatter_tensor(torch.empty(3), torch.ones(3 * P),
                                                       op=R.MIN if RANK == 0 else R.MAX), ["reduce_scatter"])
    expect_mismatch("reduce root (1 on rank 0, 0 elsewhere)",
                    lambda: dist.reduce(torch.ones(4), 1 if RANK == 0 else 0), ["reduce", "root"])
    expect_mismatch("all_reduce_coalesced sizes",
                    lambda: dist.all_reduce_coalesced([torch.ones(2), torch.ones(3 if RANK else 4)]), ["all_reduce"])
    expect_mismatch("mw.all_reduce numel (numpy)",
                    lambda: mw.all_reduce(np.ones(7 if RANK == last else 8, dtype=np.float32)),
                    ["all_reduce", "7", "8"])


# -- determinism ------------------------------------------------------------------------------------------
def section_digest():
    h = hashlib.sha256()
    for i, (dtype, op, n) in enumerate([(torch.float32, R.SUM, 100003), (torch.bfloat16, R.SUM, 50001),
                                        (torch.float16, R.AVG, 30011), (torch.float64, R.PRODUCT, 777),
                                        (torch.bfloat16, R.PRODUCT, 999),
                                        (torch.float32, R.AVG, 1), (torch.complex64, R.SUM, 333)]):
        x = data(n, dtype, 31337 + 17 * i + RANK, op)
        a, b = x.clone(), x.clone()
        dist.all_reduce(a, op=op)
        dist.all_reduce(b, op=op)
        assert torch.equal(as_bits(a), as_bits(b)), f"digest {dtype} {name(op)}: two calls differ"
        out = torch.empty(n // P + 1, dtype=dtype)
        dist.reduce_scatter_tensor(out, data(P * out.numel(), dtype, 4242 + i + RANK, op), op=op)
        h.update(as_bits(a).numpy().tobytes())
        h.update(as_bits(out).numpy().tobytes())
    digests = [None] * P
    dist.all_gather_object(digests, h.hexdigest(), group=GLOO)
    log(f"digest {'-'.join(d[:16] for d in digests)}")


# -- timeouts -----------------------------------------------------------------------------------------------
def section_timeout():
    """The last rank does not call the all_reduce: every other rank raises MultiwriteTimeout (within the
    group timeout, a few seconds here), nobody hangs. The group is not usable afterwards."""
    t0 = time.monotonic()
    err = None
    if RANK != P - 1:
        try:
            dist.all_reduce(torch.ones(1000))
        except mw.MultiwriteTimeout as exc:
            err = exc
        assert err is not None, "all_reduce with a missing rank did not time out"
        took = time.monotonic() - t0
        limit = float(os.environ["MULTIWRITE_TIMEOUT"])
        assert "all_reduce" in str(err), str(err)
        assert took < 3 * limit + 5, f"the timeout took {took:.1f}s (limit {limit:g}s)"
        log(f"timeout after {took:.1f}s: {str(err)[:300]}", all_ranks=True)
    flags = [None] * P
    dist.all_gather_object(flags, err is not None, group=GLOO)
    assert flags[:-1] == [True] * (P - 1), flags
    log(f"timeout OK ({launcher()}, {P} ranks)")
    sys.stdout.flush()
    os._exit(0)    # the group's state is inconsistent now: no teardown (mpirun reports the missing finalize)


def main():
    global GLOO, RANK, P, TOPO, DIGEST
    sections = sys.argv[1:] or ["values", "bytes", "mismatch", "digest"]
    GLOO = init()
    RANK, P = dist.get_rank(), dist.get_world_size()
    TOPO = group_of().topo
    DIGEST = hashlib.sha256()
    timer = Timer()
    for sec in sections:
        t = Timer()
        globals()[f"section_{sec}"]()
        log(f"{sec}: ok ({t})")
    log(f"checks: {COUNTS} ({timer})")
    dist.barrier()
    log(f"reduce OK ({launcher()}, {P} ranks, {TOPO.num_nodes} nodes, "
        f"ranks per node {[len(r) for r in TOPO.node_ranks]}, transport {group_of().transport.name})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
