"""The harness of the collective benchmarks: the driver of a benchmark's main (flag checks, SPMD
set-up, results), the interface of one implementation under test, the interleaved timing loop with
the balanced order of the implementations, progress lines, and which implementations this launch
can run.

Conventions (docs/benchmarks.md, "Method"):

* every implementation runs on the same data in the same run, interleaved A B D C, B C A D, ... (a
  balanced order: each implementation follows each other equally often; ``--order fixed``); every
  iteration starts after a barrier; time of an iteration = max over ranks of the rank's time; the
  reported time = median over the timed iterations (warm-up iterations are not counted);
* every result (warm-up included) is checked against a reference each rank computes locally from the
  seeds (never from what the network delivered); ``#wrong`` counts wrong elements over all ranks and
  timed iterations and must be 0;
* ``bound(us)`` = max over node links (each direction) of the bytes that must cross it with dedup /
  link rate + one node-to-node latency; ``time/bound`` = time / bound (bound.py).
"""
import statistics
import sys
import time

from .context import Context
from .options import fail
from .report import emit


class Impl:
    """One implementation of the collective under test. Subclasses set ``name`` and implement
    ``prepare(it)`` (untimed: inputs of iteration ``it``, poisoned outputs), ``run()`` (timed) and
    ``check(it)`` -> number of wrong elements (untimed). ``inter_bytes()`` -> bytes this rank sent to
    other nodes in the last run (None if unknown)."""

    name = "?"
    uses_mw = False

    def prepare(self, it):
        pass

    def run(self):
        raise NotImplementedError

    def check(self, it):
        return 0

    def inter_bytes(self):
        return None

    def release(self):
        pass


class DataImpl(Impl):
    """An Impl on a shared data object with ``iteration(it)`` (the inputs of iteration ``it``),
    ``poison()`` (outputs wrong until written) and ``wrong()`` (wrong elements after the run)."""

    def __init__(self, ctx, data):
        self.ctx, self.data = ctx, data

    def prepare(self, it):
        self.data.iteration(it)
        self.data.poison()

    def check(self, it):
        return self.data.wrong()


class MWImpl(Impl):
    """An implementation that calls multiwrite: its inter-node bytes are what mw.stats() counted."""
    uses_mw = True

    def inter_bytes(self):
        import multiwrite as mw
        return mw.stats()["inter_node"]["bytes"]


class Progress:
    def __init__(self, ctx, quiet, what):
        self.on = ctx.rank == 0 and not quiet
        self.what = what
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, text, force=False):
        now = time.monotonic()
        if self.on and (force or now - self.last > 2.0):
            self.last = now
            print(f"[bench {self.what} +{now - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)


def balanced_orders(n):
    """Orders of ``n`` implementations in which each comes first equally often and each follows each
    other equally often (a Williams square: n rows for even n, 2n for odd n)."""
    first, lo, hi = [0], 1, n - 1
    while len(first) < n:
        first.append(lo)
        lo += 1
        if len(first) < n:
            first.append(hi)
            hi -= 1
    rows = [[(v + i) % n for v in first] for i in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 and n > 1 else rows


def run_interleaved(ctx, impls, iters, warmup, progress=None, label="", order="balanced"):
    """Run every implementation ``warmup + iters`` times, interleaved, each after a barrier; iteration
    i runs them in row i of ``balanced_orders`` (``order`` "balanced") or as given ("fixed").

    Returns {impl.name: {"times_us": [max over ranks, per timed iteration], "wrong": int (all ranks,
    timed iterations), "wrong_warmup": int, "inter_bytes_node": [per node, median over iterations],
    "wire_bytes_node": [...] or None, "rank_times_us": per-rank medians}}.
    """
    import multiwrite as mw
    n = warmup + iters
    local = {im.name: {"t": [], "wrong": [], "inter": [], "wire": []} for im in impls}
    wire = ctx.wire if (ctx.wire is not None and ctx.topo.local_rank == 0) else None
    orders = balanced_orders(len(impls)) if order == "balanced" else [list(range(len(impls)))]
    for it in range(n):
        for im in (impls[i] for i in orders[it % len(orders)]):
            im.prepare(it)
            if im.uses_mw:
                mw.reset_stats()
            if ctx.wire is not None:      # extra barrier: the node's counter starts after every rank finished
                ctx.barrier()
                w0 = wire.read() if wire is not None else None
            ctx.barrier()
            t0 = time.perf_counter()
            im.run()
            t1 = time.perf_counter()
            rec = local[im.name]
            ctx.barrier()      # no rank checks (uses CPU) while another is still in the timed call
            if wire is not None:
                rec["wire"].append(wire.read() - w0)
            rec["t"].append((t1 - t0) * 1e6)
            rec["inter"].append(im.inter_bytes())
            rec["wrong"].append(int(im.check(it)))
        if progress is not None:
            progress(f"{label} iteration {it + 1}/{n}" + (" (warm-up)" if it < warmup else ""))
    gathered = ctx.allgather_obj(local)
    topo = ctx.topo
    out = {}
    for im in impls:
        per_rank = [gathered[r][im.name] for r in range(ctx.size)]
        times = [max(per_rank[r]["t"][i] for r in range(ctx.size)) for i in range(n)]
        wrong_all = [sum(per_rank[r]["wrong"][i] for r in range(ctx.size)) for i in range(n)]
        inter = None
        if all(v is not None for pr in per_rank for v in pr["inter"]):
            per_iter = [[sum(per_rank[r]["inter"][i] for r in topo.node_ranks[m]) for m in range(topo.num_nodes)]
                        for i in range(warmup, n)]
            inter = [int(statistics.median(col)) for col in zip(*per_iter)]
        wire_node = None
        if ctx.wire is not None:
            wire_node = []
            for m in range(topo.num_nodes):
                leader = topo.node_ranks[m][0]
                vals = per_rank[leader]["wire"][warmup:]
                wire_node.append(int(statistics.median(vals)) if vals else None)
        out[im.name] = {"times_us": times[warmup:], "wrong": sum(wrong_all[warmup:]),
                        "wrong_warmup": sum(wrong_all[:warmup]), "inter_bytes_node": inter,
                        "wire_bytes_node": wire_node,
                        "rank_median_us": [statistics.median(per_rank[r]["t"][warmup:]) for r in range(ctx.size)]}
    return out



def available_impls(ctx, names):
    """``names`` without MPI's own collective when not launched by mpirun (with a note)."""
    if ctx.comm is None and "mpi" in names:
        if ctx.rank == 0:
            print("# note: not launched by mpirun: MPI's own collective is left out", file=sys.stderr)
        names = [n for n in names if n != "mpi"]
    return names


def run_main(args, prepare, bench, check=None):
    """The main of a collective benchmark: ``prepare()`` checks the flags before any communication
    (ValueError: its message, exit status 2) and returns what ``bench`` needs; then, in the SPMD
    context, ``check(ctx)`` checks what needs the world size (ValueError: the same) and
    ``bench(ctx, prepared)`` returns the benchmark documents, which rank 0 prints and writes
    (report.emit: exit status 1 if any result was wrong)."""
    try:
        prepared = prepare()
    except ValueError as e:
        return fail(None, str(e))
    ctx = Context(barrier=args.barrier)
    try:
        if check is not None:
            try:
                check(ctx)
            except ValueError as e:
                return fail(ctx, str(e))
        return emit(ctx, args, bench(ctx, prepared))
    finally:
        ctx.close()
