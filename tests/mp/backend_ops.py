"""Every collective of the "multiwrite" backend against Gloo's result in the same run.

The world group is init_process_group("multiwrite"); a Gloo group over the same ranks
(dist.new_group(backend="gloo")) computes the reference. Each op runs sync and async_op=True (waited
through wait() or get_future()), for several dtypes, on contiguous and non-contiguous tensors; the
results must be bitwise equal to Gloo's. Where Gloo has no equivalent (uneven all_gather/all_to_all
sizes) the reference is built locally. Floating SUM/AVG/PRODUCT reductions are the exception:
multiwrite reduces node first, in another order than Gloo's ring (multiwrite/ops/reduce.py), so their
values may differ from Gloo's by rounding; they must be within the dtype's rounding of Gloo's and, for
all_reduce, bitwise equal on every rank. Unsupported combinations must raise a clear error on every rank
and leave the group usable. Run by tests/test_backend_mp.py under mpirun and torchrun (4 ranks,
MULTIWRITE_RANKS_PER_NODE=2).
"""
import importlib
import itertools
import os

import torch
import torch.distributed as dist

from backend_common import Timer, as_bits, bitwise_equal, finish, group_of, init, log, mw

R = dist.ReduceOp
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.uint8, torch.bool]
REDUCE_OPS = [R.SUM, R.AVG, R.PRODUCT, R.MIN, R.MAX, R.BAND, R.BOR, R.BXOR]
COUNTS = {"compared": 0, "errors_matched": 0}
MINE = [True]          # is the op being settled multiwrite's (True) or the Gloo reference (False)?
_waits = itertools.count()


def opname(op):
    return str(op).split(".")[-1] if not hasattr(op, "op") else str(op.op).split(".")[-1]


def data(shape, dtype, seed, op=None):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        if op == R.PRODUCT:
            return (0.5 + torch.rand(shape, generator=g)).to(dtype)
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    if op == R.PRODUCT:
        return torch.randint(1, 4, shape, generator=g).to(dtype)
    return torch.randint(0 if dtype == torch.uint8 else -50, 100, shape, generator=g).to(dtype)


def noncontig(t):
    """(view with t's values and stride 2 in the last dim, the backing pair tensor)."""
    filler = torch.ones_like(t) if t.dtype == torch.bool else torch.full_like(t, 7)
    pair = torch.stack([t, filler], dim=-1)
    view = pair[..., 0]
    assert not view.is_contiguous() or view.numel() <= 1
    return view, pair


def check_filler(pair, what):
    filler = pair[..., 1]
    expected = torch.ones_like(filler) if filler.dtype == torch.bool else torch.full_like(filler, 7)
    assert torch.equal(filler, expected), f"{what}: wrote outside the non-contiguous view"


def settle(work, async_op, what):
    """Complete an op: sync ops return None; async ones are waited through wait() or the future."""
    if not async_op:
        assert work is None, f"{what}: sync op returned {work!r}"
        return
    assert work is not None, f"{what}: async op returned no Work"
    if isinstance(work, torch._C.Future):     # dist.all_reduce_coalesced returns the future
        work.wait()
        return
    if next(_waits) % 2 or not MINE[0]:      # (Gloo has no future for reduce_scatter, send, recv)
        assert work.wait() in (True, None)
    else:
        value = work.get_future().wait()
        assert isinstance(value, list), f"{what}: future value {type(value)}"
    if MINE[0]:   # (Gloo's own Work may flag completion a moment after its future completes)
        assert work.is_completed(), f"{what}: not completed after wait"


def expect_same(mine, ref, what):
    assert bitwise_equal(mine, ref), f"{what}: multiwrite differs from Gloo:\n{mine}\nvs\n{ref}"
    COUNTS["compared"] += 1


#: (rtol, atol) between multiwrite's and Gloo's floating SUM/AVG/PRODUCT of this file's data (|x| < ~20,
#: 4 ranks): a few roundings of the dtype on each side, in different orders.
ROUNDING = {torch.float32: (1e-5, 2e-5), torch.float64: (1e-12, 1e-12), torch.float16: (4e-3, 0.1),
            torch.bfloat16: (3e-2, 0.5)}


def order_dependent(dtype, op):
    """Floating SUM/AVG/PRODUCT: the value depends on the order of the reduction."""
    return dtype.is_floating_point and op in (R.SUM, R.AVG, R.PRODUCT)


def expect_close(mine, ref, what, everywhere):
    """A floating SUM/AVG/PRODUCT: within the rounding of Gloo's (another order: node first), and with
    ``everywhere`` (all_reduce) bitwise equal on every rank."""
    assert mine.shape == ref.shape and mine.dtype == ref.dtype, f"{what}: {mine.shape} {mine.dtype} vs {ref.shape}"
    rtol, atol = ROUNDING[mine.dtype]
    assert torch.allclose(mine.double(), ref.double(), rtol=rtol, atol=atol), \
        f"{what}: multiwrite differs from Gloo beyond rounding:\n{mine}\nvs\n{ref}"
    if everywhere:
        bits = as_bits(mine)
        everyone = [torch.empty_like(bits) for _ in range(P)]
        dist.all_gather(everyone, bits, group=GLOO)
        assert all(torch.equal(b, bits) for b in everyone), f"{what}: ranks got different results"
    COUNTS["compared"] += 1


def both(what, run, close=False, everywhere=False):
    """run(group) -> result tensor(s). Gloo's outcome (value or error) must be matched."""
    MINE[0] = False
    try:
        ref = run(GLOO)
        ref_err = None
    except Exception as exc:  # noqa: BLE001
        ref, ref_err = None, exc
    finally:
        MINE[0] = True
    try:
        mine = run(None)
        err = None
    except Exception as exc:  # noqa: BLE001
        mine, err = None, exc
    if ref_err is not None:
        assert err is not None, f"{what}: Gloo raised ({ref_err}) but multiwrite did not"
        assert "multiwrite" in str(err), f"{what}: unclear error: {err!r}"
        COUNTS["errors_matched"] += 1
        return
    if err is not None:
        raise AssertionError(f"{what}: multiwrite raised but Gloo did not") from err
    for m, r in zip(mine if isinstance(mine, (list, tuple)) else [mine],
                    ref if isinstance(ref, (list, tuple)) else [ref]):
        if close:
            expect_close(m, r, what, everywhere)
        else:
            expect_same(m, r, what)


# ---------------------------------------------------------------------------------------------------
def test_all_gather_into_tensor():
    for dtype, async_op, layout in itertools.product(DTYPES, (False, True), ("contig", "nc_in", "nc_out", "stack")):
        what = f"all_gather_into_tensor {dtype} async={async_op} {layout}"
        x = data((5, 3), dtype, 10 + RANK)

        def run(group):
            inp = noncontig(x)[0] if (layout == "nc_in" and group is None) else x
            if layout == "stack" and group is None:     # Gloo only takes the concatenated form
                out = torch.empty((P, 5, 3), dtype=dtype)
            elif layout == "nc_out" and group is None:
                out, pair = noncontig(torch.zeros((P * 5, 3), dtype=dtype))
            else:
                out = torch.empty((P * 5, 3), dtype=dtype)
            settle(dist.all_gather_into_tensor(out, inp, group=group, async_op=async_op), async_op, what)
            if layout == "nc_out" and group is None:
                check_filler(pair, what)
            return out.reshape(P * 5, 3)
        both(what, run)


def test_all_gather_list():
    for dtype, async_op in itertools.product(DTYPES, (False, True)):
        what = f"all_gather {dtype} async={async_op}"
        x = data((4,), dtype, 20 + RANK)

        def run(group):
            outs = [torch.empty(4, dtype=dtype) for _ in range(P)]
            if group is None:
                outs[1], pair = noncontig(torch.zeros(4, dtype=dtype))
            settle(dist.all_gather(outs, noncontig(x)[0] if group is None else x, group=group,
                                   async_op=async_op), async_op, what)
            return [o.clone() for o in outs]
        both(what, run)
        # uneven sizes: Gloo refuses them; the reference is every rank's (deterministic) input
        outs = [torch.empty(r + 1, dtype=dtype) for r in range(P)]
        settle(dist.all_gather(outs, data((RANK + 1,), dtype, 30 + RANK), async_op=async_op), async_op, what)
        for r in range(P):
            expect_same(outs[r], data((r + 1,), dtype, 30 + r), what + " uneven")


def test_broadcast():
    for dtype, async_op, root in itertools.product(DTYPES, (False, True), range(P)):
        what = f"broadcast {dtype} async={async_op} root={root}"
        x = data((6, 2), dtype, 40 + RANK)

        def run(group):
            if group is None and RANK % 2:
                t, pair = noncontig(x.clone())
            else:
                t, pair = x.clone(), None
            settle(dist.broadcast(t, root, group=group, async_op=async_op), async_op, what)
            if pair is not None:
                check_filler(pair, what)
            return t.clone()
        both(what, run)


def test_all_reduce():
    for dtype, op, async_op in itertools.product(DTYPES, REDUCE_OPS, (False, True)):
        what = f"all_reduce {dtype} {opname(op)} async={async_op}"
        x = data((7,), dtype, 50 + RANK, op)

        def run(group):
            if group is None and async_op:
                t, pair = noncontig(x.clone())
            else:
                t, pair = x.clone(), None
            settle(dist.all_reduce(t, op=op, group=group, async_op=async_op), async_op, what)
            if pair is not None:
                check_filler(pair, what)
            return t.clone()
        both(what, run, close=order_dependent(dtype, op), everywhere=True)


def test_reduce_scatter_tensor():
    for dtype, op, async_op in itertools.product(DTYPES, REDUCE_OPS, (False, True)):
        what = f"reduce_scatter_tensor {dtype} {opname(op)} async={async_op}"
        x = data((P * 3,), dtype, 60 + RANK, op)

        def run(group):
            inp = noncontig(x)[0] if group is None else x
            out = torch.empty(3, dtype=dtype)
            settle(dist.reduce_scatter_tensor(out, inp, op=op, group=group, async_op=async_op), async_op, what)
            return out
        both(what, run, close=order_dependent(dtype, op))


def test_list_and_coalesced_reductions():
    """dist.reduce_scatter (tensor lists) and dist.all_reduce_coalesced, sync and async."""
    for dtype, op, async_op in itertools.product((torch.float32, torch.bfloat16, torch.int64),
                                                 (R.SUM, R.MAX, R.AVG), (False, True)):
        what = f"reduce_scatter(list) {dtype} {opname(op)} async={async_op}"
        ins = [data((3,), dtype, 1000 + 10 * RANK + d) for d in range(P)]

        def run_rs(group):
            out = torch.empty(3, dtype=dtype)
            settle(dist.reduce_scatter(out, [t.clone() for t in ins], op=op, group=group, async_op=async_op),
                   async_op, what)
            return out
        both(what, run_rs, close=order_dependent(dtype, op))
        what = f"all_reduce_coalesced {dtype} {opname(op)} async={async_op}"
        ts = [data((n,), dtype, 1100 + 10 * RANK + n) for n in (2, 5)]

        def run_coalesced(group):
            mine = [t.clone() for t in ts]
            settle(dist.all_reduce_coalesced(mine, op=op, group=group, async_op=async_op), async_op, what)
            return mine
        both(what, run_coalesced, close=order_dependent(dtype, op), everywhere=True)


def test_reduce():
    for dtype, op, async_op in itertools.product(DTYPES, REDUCE_OPS, (False, True)):
        what = f"reduce {dtype} {opname(op)} async={async_op}"
        x = data((5,), dtype, 70 + RANK, op)
        root = 3 if async_op else 0

        def run(group):
            t = x.clone()
            settle(dist.reduce(t, root, op=op, group=group, async_op=async_op), async_op, what)
            return t if RANK == root else x     # non-root contents are unspecified
        both(what, run, close=order_dependent(dtype, op))


def a2a_splits(s, d):
    """Rows rank s sends to rank d in the uneven case (zeros included)."""
    return (s + 2 * d) % 4


def test_all_to_all_single():
    for dtype, async_op, uneven in itertools.product(DTYPES, (False, True), (False, True)):
        what = f"all_to_all_single {dtype} async={async_op} uneven={uneven}"
        in_splits = [a2a_splits(RANK, d) for d in range(P)] if uneven else None
        out_splits = [a2a_splits(s, RANK) for s in range(P)] if uneven else None
        rows_in = sum(in_splits) if uneven else 2 * P
        rows_out = sum(out_splits) if uneven else 2 * P
        x = data((rows_in, 3), dtype, 80 + RANK)

        def run(group):
            inp = noncontig(x)[0] if group is None else x     # Gloo itself needs contiguous tensors
            out = torch.empty((rows_out, 3), dtype=dtype)
            settle(dist.all_to_all_single(out, inp, out_splits, in_splits, group=group, async_op=async_op),
                   async_op, what)
            return out
        both(what, run)


def test_all_to_all_list():
    for dtype, async_op in itertools.product(DTYPES, (False, True)):
        what = f"all_to_all {dtype} async={async_op}"
        ins = [data((3,), dtype, 90 + 10 * RANK + d) for d in range(P)]

        def run(group):
            outs = [torch.empty(3, dtype=dtype) for _ in range(P)]
            settle(dist.all_to_all(outs, ins, group=group, async_op=async_op), async_op, what)
            return outs
        both(what, run)
        # uneven: rank s sends s + d + 1 elements to rank d (Gloo refuses uneven lists)
        ins = [data((RANK + d + 1,), dtype, 200 + 10 * RANK + d) for d in range(P)]
        outs = [torch.empty(s + RANK + 1, dtype=dtype) for s in range(P)]
        settle(dist.all_to_all(outs, ins, async_op=async_op), async_op, what)
        for s in range(P):
            expect_same(outs[s], data((s + RANK + 1,), dtype, 200 + 10 * s + RANK), what + " uneven")


def test_gather_scatter():
    for dtype, async_op in itertools.product(DTYPES, (False, True)):
        root = 2
        x = data((4,), dtype, 300 + RANK)
        what = f"gather {dtype} async={async_op}"

        def run_gather(group):
            outs = [torch.empty(4, dtype=dtype) for _ in range(P)] if RANK == root else None
            settle(dist.gather(noncontig(x)[0] if group is None else x, outs, root, group=group,
                               async_op=async_op), async_op, what)
            return outs if RANK == root else [x]
        both(what, run_gather)
        what = f"scatter {dtype} async={async_op}"
        chunks = [data((4,), dtype, 400 + r) for r in range(P)]

        def run_scatter(group):
            out = torch.empty(4, dtype=dtype)
            if group is None:
                out, pair = noncontig(torch.zeros(4, dtype=dtype))
            settle(dist.scatter(out, chunks if RANK == root else None, root, group=group, async_op=async_op),
                   async_op, what)
            return out.clone()
        both(what, run_scatter)


def test_send_recv():
    pairs = [(0, 3), (3, 0), (1, 2), (2, 1)]
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.bool):
        for src, dst in pairs:
            payload = data((6,), dtype, 500 + src)
            if RANK == src:
                dist.send(noncontig(payload)[0], dst)
                work = dist.isend(payload, dst, tag=7)
                work.wait()
            elif RANK == dst:
                buf, pair = noncontig(torch.zeros(6, dtype=dtype))
                dist.recv(buf, src)
                expect_same(buf, payload, f"send/recv {dtype} {src}->{dst}")
                check_filler(pair, "recv")
                buf2 = torch.zeros(6, dtype=dtype)
                work = dist.irecv(buf2, src, tag=7)
                fut = work.get_future()
                assert isinstance(fut.wait(), list)
                assert work.is_completed()
                expect_same(buf2, payload, f"isend/irecv {dtype} {src}->{dst}")
        # any-source receive
        if RANK == 1:
            buf = torch.zeros(6, dtype=dtype)
            work = dist.irecv(buf, tag=9)
            work.wait()
            assert work._source_rank() == 2, work._source_rank()
            expect_same(buf, data((6,), dtype, 600), "irecv any source")
            assert dist.recv(buf, tag=10) == 2
            expect_same(buf, data((6,), dtype, 601), "recv any source")
        elif RANK == 2:
            dist.send(data((6,), dtype, 600), 1, tag=9)
            dist.send(data((6,), dtype, 601), 1, tag=10)
    for async_op in (False, True):
        settle(dist.barrier(async_op=async_op), async_op, "barrier")


def test_objects():
    objs = [None] * P
    dist.all_gather_object(objs, {"rank": RANK, "s": "x" * RANK})
    assert objs == [{"rank": r, "s": "x" * r} for r in range(P)], objs
    lst = [RANK, "hello" if RANK == 1 else None]
    dist.broadcast_object_list(lst, src=1)
    assert lst == [1, "hello"], lst


def test_subgroups():
    for ranks in ([1, 2], [0, 2, 3], [1, 3]):
        sub = dist.new_group(ranks)                       # default backend: multiwrite
        gsub = dist.new_group(ranks, backend="gloo")
        if RANK not in ranks:
            continue
        n, me = len(ranks), ranks.index(RANK)
        assert dist.get_backend(sub) == "multiwrite" and dist.get_world_size(sub) == n
        g = group_of(sub)
        assert g.size == n and g.rank == me
        # emulated nodes follow global ranks (MULTIWRITE_RANKS_PER_NODE=2)
        assert g.topo.node_of == tuple(sorted(set(r // 2 for r in ranks)).index(r // 2) for r in ranks), g.topo
        for dtype, async_op in itertools.product((torch.float32, torch.int64, torch.bfloat16), (False, True)):
            what = f"subgroup {ranks} {dtype} async={async_op}"
            x = data((4,), dtype, 700 + RANK)

            def run(group):
                grp = sub if group is None else gsub
                out = torch.empty(4 * n, dtype=dtype)
                settle(dist.all_gather_into_tensor(out, x, group=grp, async_op=async_op), async_op, what)
                b = x.clone()
                settle(dist.broadcast(b, ranks[-1], group=grp, async_op=async_op), async_op, what)
                s = x.clone()
                settle(dist.all_reduce(s, op=R.MAX, group=grp, async_op=async_op), async_op, what)
                a2a = torch.empty(4 * n, dtype=dtype)
                settle(dist.all_to_all_single(a2a, data((4 * n,), dtype, 800 + RANK), group=grp,
                                              async_op=async_op), async_op, what)
                return [out, b, s, a2a]
            both(what, run)
        # multiwrite's own API on the subgroup's Group
        out = torch.empty(n * 2)
        mw.all_gather(out, torch.full((2,), float(RANK)), group=g)
        assert torch.equal(out, torch.tensor([float(r) for r in ranks for _ in range(2)]))


def test_inter_node_bytes():
    """dist.broadcast and dist.all_gather_into_tensor really go through MultiWrite, all_to_all_single
    through the runtime: exact inter-node byte counts per node."""
    g = group_of()
    topo = g.topo
    N = topo.num_nodes
    for root in range(P):
        c = 4096 * 4
        g.stats.reset()
        t = torch.full((4096,), float(root)) if RANK == root else torch.zeros(4096)
        dist.broadcast(t, root)
        assert torch.all(t == root)
        sent = [0] * N
        for node, b in gather_stats(g):
            sent[node] += b
        root_node = topo.node_of[root]
        want = [(N - 1) * (c + 64) if m == root_node else 0 for m in range(N)]
        assert sent == want, f"broadcast from {root}: inter-node bytes per node {sent}, expected {want}"
    c = 1000 * 2
    g.stats.reset()
    out = torch.empty(P * 1000, dtype=torch.bfloat16)
    dist.all_gather_into_tensor(out, torch.ones(1000, dtype=torch.bfloat16))
    sent = [0] * N
    for node, b in gather_stats(g):
        sent[node] += b
    if importlib.import_module("multiwrite.engine.gather").node_aggregated(topo, c):
        want = [(N - 1) * (len(topo.node_ranks[m]) * c + 64) for m in range(N)]   # one packet per node pair
    else:
        want = [len(topo.node_ranks[m]) * (N - 1) * (c + 64) for m in range(N)]
    assert sent == want, f"all_gather_into_tensor: inter-node bytes per node {sent}, expected {want}"
    # all_to_all_single (runtime, no replication): one packet per remote destination rank
    row = 3 * 8
    g.stats.reset()
    out = torch.empty((sum(a2a_splits(s, RANK) for s in range(P)), 3), dtype=torch.int64)
    dist.all_to_all_single(out, torch.zeros((sum(a2a_splits(RANK, d) for d in range(P)), 3), dtype=torch.int64),
                           [a2a_splits(s, RANK) for s in range(P)], [a2a_splits(RANK, d) for d in range(P)])
    sent = [0] * N
    for node, b in gather_stats(g):
        sent[node] += b
    want = [sum(a2a_splits(s, d) * row + 64 for s in topo.node_ranks[m] for d in range(P)
                if topo.node_of[d] != m) for m in range(N)]
    assert sent == want, f"all_to_all_single: inter-node bytes per node {sent}, expected {want}"


def gather_stats(g):
    objs = [None] * P
    dist.all_gather_object(objs, (g.topo.node, g.stats.inter_bytes), group=GLOO)
    return objs


def test_errors():
    """Unsupported combinations raise a clear error on every rank; the group stays usable."""
    cases = [
        ("BAND on float32", lambda: dist.all_reduce(torch.ones(3), op=R.BAND), TypeError, "BAND"),
        ("AVG on int32", lambda: dist.all_reduce(torch.ones(3, dtype=torch.int32), op=R.AVG), TypeError, "AVG"),
        ("AVG reduce_scatter on int64",
         lambda: dist.reduce_scatter_tensor(torch.ones(1, dtype=torch.int64), torch.ones(P, dtype=torch.int64),
                                            op=R.AVG), TypeError, "AVG"),
        ("PREMUL_SUM", lambda: dist.all_reduce(torch.ones(3), op=dist._make_nccl_premul_sum(2.0)),
         ValueError, "PREMUL_SUM"),
        ("all_gather dtype mismatch",
         lambda: dist.all_gather_into_tensor(torch.empty(P * 3, dtype=torch.float64), torch.ones(3)),
         (TypeError, ValueError), "dtype"),
        ("all_gather size mismatch",
         lambda: dist.all_gather_into_tensor(torch.empty(P * 3 + 1), torch.ones(3)), (ValueError, RuntimeError), ""),
        ("all_to_all_single bad splits",
         lambda: dist.all_to_all_single(torch.empty(P), torch.ones(P), [1] * P, [2] * P), ValueError, "split"),
        ("meta tensor", lambda: dist.all_reduce(torch.ones(3, device="meta")), (TypeError, RuntimeError), ""),
    ]
    for what, fn, kinds, text in cases:
        try:
            fn()
        except kinds as exc:
            msg = str(exc)
            assert text in msg, f"{what}: error does not say {text!r}: {msg}"
            assert "multiwrite" in msg or what in ("meta tensor", "all_gather size mismatch"), \
                f"{what}: error does not name multiwrite: {msg}"
            COUNTS["errors_matched"] += 1
        else:
            raise AssertionError(f"{what}: no error raised")
    # split sizes that disagree across ranks: rank 0 expects [2, 0, 1, 1, ...] rows while every rank
    # sends one row to each; the ranks that can see it raise a MismatchError, nobody hangs
    out_splits = [2, 0] + [1] * (P - 2) if RANK == 0 else [1] * P
    try:
        dist.all_to_all_single(torch.empty(P, 2), torch.ones(P, 2), out_splits, [1] * P)
        raised = False
    except mw.MismatchError as exc:
        raised = True
        assert "all_to_all" in str(exc), str(exc)
    assert raised or RANK != 0, "rank 0 did not detect the split disagreement"
    COUNTS["errors_matched"] += int(raised)
    out = torch.empty(P * 2)
    dist.all_gather_into_tensor(out, torch.full((2,), float(RANK)))
    assert torch.equal(out, torch.arange(P).float().repeat_interleave(2)), "group unusable after errors"
    a2a = torch.empty(P)
    dist.all_to_all_single(a2a, torch.full((P,), float(RANK)))
    assert torch.equal(a2a, torch.arange(P).float()), "all_to_all unusable after a mismatch"


def main():
    global GLOO, RANK, P
    GLOO = init()
    RANK, P = dist.get_rank(), dist.get_world_size()
    assert dist.get_backend() == "multiwrite", dist.get_backend()
    assert dist.get_backend(GLOO) == "gloo"
    assert group_of() is mw.default_group(), "the world group's Group is multiwrite's default group"
    timer = Timer()
    only = os.environ.get("BACKEND_OPS_ONLY")       # debugging: run a subset, e.g. "reduce_scatter"
    for test in (test_all_gather_into_tensor, test_all_gather_list, test_broadcast, test_all_reduce,
                 test_reduce_scatter_tensor, test_list_and_coalesced_reductions, test_reduce,
                 test_all_to_all_single, test_all_to_all_list,
                 test_gather_scatter, test_send_recv, test_objects, test_subgroups, test_inter_node_bytes,
                 test_errors):
        if only and only not in test.__name__:
            continue
        t = Timer()
        test()
        log(f"{test.__name__}: ok ({t})")
    log(f"compared {COUNTS['compared']} results bitwise with Gloo/reference, "
        f"{COUNTS['errors_matched']} unsupported combinations raised clear errors ({timer})")
    finish("backend ops")


if __name__ == "__main__":
    main()
