"""Shared machinery of the collective benchmarks (nccl-tests style: one file per collective, this file
for what they share): SPMD setup of the three communication stacks, interleaved timing, checking,
the physical bound, tables, JSON and plots.

Conventions (docs/benchmarks.md, "Method"):

* every implementation runs on the same data in the same run, interleaved A B D C, B C A D, ... (a
  balanced order: each implementation follows each other equally often; ``--order fixed``); every
  iteration starts after a barrier; time of an iteration = max over ranks of the rank's time; the
  reported time = median over the timed iterations (warm-up iterations are not counted);
* every result (warm-up included) is checked against a reference each rank computes locally from the
  seeds (never from what the network delivered); ``#wrong`` counts wrong elements over all ranks and
  timed iterations and must be 0;
* ``bound(us)`` = max over node links (each direction) of the bytes that must cross it with dedup /
  link rate + one node-to-node latency; ``time/bound`` = time / bound.
"""
import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import socket
import statistics
import sys
import time

import numpy as np
import torch

from . import format_size, parse_size

IMPLS = ("mpi", "gloo", "unicast", "multiwrite")
LABELS = {"mpi": "MPI", "gloo": "Gloo", "unicast": "mw-unicast", "multiwrite": "MultiWrite"}
BASELINES = ("mpi", "gloo")
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
          "uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32, "int64": torch.int64,
          "float64": torch.float64, "double": torch.float64}


# ---------------------------------------------------------------------------------------------------
# command line

def parse_rate(text):
    """'1gbit', '100mbit', '1e9', '125mbps' (bytes/s, tc convention) -> bit/s."""
    t = str(text).strip().lower()
    units = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("gbps", 8e9), ("mbps", 8e6), ("kbps", 8e3),
             ("bit", 1.0), ("bps", 8.0)]
    for suffix, mult in units:
        if t.endswith(suffix):
            return float(t[:-len(suffix)]) * mult
    return float(t)


def parse_delay_us(text):
    """'100us', '5ms', '0', '0.2s' -> microseconds (a bare number is microseconds)."""
    t = str(text).strip().lower()
    for suffix, mult in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        if t.endswith(suffix):
            return float(t[:-len(suffix)]) * mult
    return float(t)


def size_arg(text):
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_common_arguments(parser, *, sizes_help):
    """Flags every collective benchmark takes (nccl-tests names where they exist)."""
    g = parser.add_argument_group("sizes and iterations (nccl-tests flags)")
    g.add_argument("-b", "--minbytes", type=size_arg, default=None, metavar="SIZE", help=sizes_help)
    g.add_argument("-e", "--maxbytes", type=size_arg, default=None, metavar="SIZE",
                   help="largest size (default: the benchmark's, or -b when only -b is given)")
    g.add_argument("-f", "--stepfactor", type=int, default=4, metavar="F",
                   help="multiply the size by F between -b and -e (default %(default)s)")
    g.add_argument("-n", "--iters", type=int, default=10, metavar="N",
                   help="timed iterations per size and implementation; the median is reported "
                        "(default %(default)s; the convention is >= 10)")
    g.add_argument("-w", "--warmup_iters", type=int, default=2, metavar="W",
                   help="untimed warm-up iterations per size and implementation (default %(default)s; checked too)")
    g.add_argument("-d", "--dtype", default="bfloat16", choices=sorted(DTYPES),
                   help="element type of the data (default %(default)s)")
    g = parser.add_argument_group("what to compare")
    g.add_argument("--impls", default=",".join(IMPLS),
                   help="comma-separated implementations, run interleaved in this order (default %(default)s): "
                        "mpi = MPI's own collective (mpi4py; needs mpirun), gloo = torch.distributed Gloo's own, "
                        "unicast = multiwrite with one copy per destination rank (mode='unicast'), "
                        "multiwrite = multiwrite MultiWrite (one copy per destination node)")
    g.add_argument("--order", choices=("balanced", "fixed"), default="balanced",
                   help="order of the implementations within an iteration: balanced = the rows of a Williams "
                        "square, one per iteration (every implementation comes first equally often and "
                        "follows every other equally often), fixed = always the --impls order. Default "
                        "%(default)s: what ran just before changes a call's time (after Gloo's 14 ms call, "
                        "spent waiting, a 1 KiB MultiWrite all_gather measured 1.4-1.7 ms instead of 0.9-1.1; "
                        "after 15 ms idle, MPI's took 1.03 ms instead of 0.86), so a fixed order biases the table")
    g.add_argument("--seed", type=int, default=1, help="seed of the data and routing (default %(default)s)")
    g = parser.add_argument_group("physical bound (default: MULTIWRITE_VCLUSTER_RATE / _PATH_DELAY_US from launch/vcluster)")
    g.add_argument("--rate", default=None, metavar="RATE",
                   help="node link rate: 1gbit, 100mbit, or bit/s (blank bound when unknown)")
    g.add_argument("--delay", default=None, metavar="DELAY",
                   help="node-to-node one-way latency: 200us, 1ms (vcluster: 2 x its per-link --delay)")
    g = parser.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="write the results (every row, every iteration) as JSON to FILE")
    g.add_argument("--plot", metavar="FILE.png", help="write a PNG plot: latency vs size per implementation, bound dashed")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    g = parser.add_argument_group("synchronisation")
    g.add_argument("--barrier", choices=("auto", "mpi", "poll"), default="auto",
                   help="barrier before and after every timed call under mpirun: mpi = MPI_Barrier (tightest start; "
                        "use with --mca mpi_yield_when_idle 1, else waiting ranks spin), poll = MPI_Ibarrier polled "
                        "with sleeps (never spins), auto = mpi when mpi_yield_when_idle is set, else poll "
                        "(default); torchrun: Gloo's barrier")


def sizes_from_args(args, default_lo, default_hi):
    lo = args.minbytes if args.minbytes is not None else default_lo
    hi = args.maxbytes if args.maxbytes is not None else (lo if args.minbytes is not None else default_hi)
    if hi < lo:
        raise ValueError(f"-e {hi} is smaller than -b {lo}")
    if args.stepfactor < 2 and hi > lo:
        raise ValueError("-f must be >= 2")
    sizes = []
    s = lo
    while s <= hi:
        sizes.append(s)
        s *= max(args.stepfactor, 2)
    return sizes


def check_common_args(args):
    if args.iters < 1 or args.warmup_iters < 0:
        raise ValueError("-n must be >= 1 and -w >= 0")
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    bad = [i for i in impls if i not in IMPLS]
    if bad or not impls:
        raise ValueError(f"--impls: unknown {bad}; choose from {','.join(IMPLS)}")
    return impls


# ---------------------------------------------------------------------------------------------------
# SPMD context: the launcher's world, MPI's and Gloo's own communicators, and multiwrite's group

class Context:
    """Everything a benchmark rank needs. ``comm``: mpi4py COMM_WORLD (None under torchrun);
    ``gloo``: a torch.distributed Gloo group over all ranks; ``g``/``topo``: multiwrite's default group."""

    def __init__(self, barrier="auto"):
        from .._config import launched_by_mpi, launched_by_torchrun, timeout_s
        import multiwrite as mw
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        self.timeout_s = timeout_s()
        self.launcher = "torchrun" if launched_by_torchrun() else ("mpirun" if launched_by_mpi() else "single")
        self.comm = None
        if self.launcher != "torchrun":
            from mpi4py import MPI
            self.MPI = MPI
            self.comm = MPI.COMM_WORLD
        # The barrier between iterations: MPI_Barrier when Open MPI sleeps while it waits
        # (mpi_yield_when_idle; ranks leave it closest together), else a polled MPI_Ibarrier, so that
        # ranks that finished early never spin on the CPU that the still running ranks need.
        yields = os.environ.get("OMPI_MCA_mpi_yield_when_idle", "").lower() in ("1", "true", "yes")
        self.barrier_mode = ("mpi" if yields else "poll") if barrier == "auto" else barrier
        if self.comm is None:
            self.barrier_mode = "gloo"
        self.g = mw.init()
        self.topo = self.g.topo
        self.rank, self.size = self.topo.rank, self.topo.world_size
        self.gloo = self._gloo_group()
        self.vcluster = bool(os.environ.get("VCLUSTER_NODE_NAME") or os.environ.get("VCLUSTER_PREFIX"))
        self.wire = WireCounter() if self.vcluster and self.topo.num_nodes > 1 else None

    def _gloo_group(self):
        import torch.distributed as dist
        if dist.is_initialized():
            return dist.group.WORLD
        timeout = datetime.timedelta(seconds=self.timeout_s)
        if self.launcher == "torchrun":
            dist.init_process_group("gloo", timeout=timeout)
        else:
            store = self._store_over_mpi(timeout)
            dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.size, timeout=timeout)
        return dist.group.WORLD

    def _store_over_mpi(self, timeout):
        import torch.distributed as dist
        comm = self.comm
        if comm.Get_rank() == 0:
            store = dist.TCPStore("0.0.0.0", 0, comm.Get_size(), True, timeout, wait_for_workers=False)
            addr = (_my_address(), store.port)
        else:
            addr = None
        addr = comm.bcast(addr, root=0)
        if comm.Get_rank() != 0:
            store = dist.TCPStore(addr[0], addr[1], comm.Get_size(), False, timeout)
        return dist.PrefixStore("multiwrite-bench", store)

    # -- control -----------------------------------------------------------------------------
    def barrier(self):
        """All ranks arrive before any leaves; polls with sleeps (no busy spin that would steal the
        2 cores from the ranks still working) and gives up after MULTIWRITE_TIMEOUT."""
        if self.comm is not None:
            if self.barrier_mode == "mpi":
                self.comm.Barrier()
                return
            req = self.comm.Ibarrier()
            deadline = time.monotonic() + self.timeout_s
            start, nap = time.monotonic(), 0.0
            while not req.Test():
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"benchmark barrier: timed out after {self.timeout_s:g}s")
                if now - start > 0.0005:
                    nap = min(max(nap * 2, 2e-5), 1e-4)
                    time.sleep(nap)
            return
        import torch.distributed as dist
        dist.barrier(group=self.gloo)

    def allgather_obj(self, obj):
        if self.comm is not None:
            return self.comm.allgather(obj)
        import torch.distributed as dist
        out = [None] * self.size
        dist.all_gather_object(out, obj, group=self.gloo)
        return out

    def close(self):
        import torch.distributed as dist
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def _my_address():
    """An address of this rank's node that the other nodes reach (vcluster: the node's eth0)."""
    addrs = os.environ.get("VCLUSTER_NODE_ADDRS")
    node = os.environ.get("VCLUSTER_NODE_RANK")
    if addrs and node is not None:
        try:
            return addrs.split(",")[int(node)]
        except (ValueError, IndexError):
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


class WireCounter:
    """Bytes this node's eth0 transmitted (/proc/net/dev of the rank's network namespace): the real
    inter-node traffic of any implementation, TCP/IP/Ethernet headers included."""

    def __init__(self, ifname="eth0"):
        self.ifname = ifname
        self.ok = self.read() is not None

    def read(self):
        try:
            with open("/proc/net/dev") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name.strip() == self.ifname:
                        return int(rest.split()[8])
        except OSError:
            return None
        return None


# ---------------------------------------------------------------------------------------------------
# link parameters and the physical bound

def link_params(args):
    """(rate bit/s or None, node-to-node one-way latency in us or None, where they came from)."""
    rate = parse_rate(args.rate) if getattr(args, "rate", None) else None
    delay = parse_delay_us(args.delay) if getattr(args, "delay", None) else None
    src = "flags" if rate else None
    if rate is None and os.environ.get("MULTIWRITE_VCLUSTER_RATE"):
        rate = float(os.environ["MULTIWRITE_VCLUSTER_RATE"])
        src = "vcluster"
    if delay is None:
        if os.environ.get("MULTIWRITE_VCLUSTER_PATH_DELAY_US"):
            delay = float(os.environ["MULTIWRITE_VCLUSTER_PATH_DELAY_US"])
        elif os.environ.get("MULTIWRITE_VCLUSTER_DELAY_US"):
            delay = 2 * float(os.environ["MULTIWRITE_VCLUSTER_DELAY_US"])
    if rate is not None and delay is None:
        delay = 0.0
    return rate, delay, src


def bound_us(egress, ingress, rate, delay_us):
    """max over node links (both directions) of bytes / rate + one node-to-node latency (us);
    None when the rate is unknown or nothing crosses a link."""
    if not rate:
        return None
    worst = max(list(egress) + list(ingress) + [0])
    if worst <= 0:
        return None
    return worst * 8 / rate * 1e6 + (delay_us or 0.0)


# ---------------------------------------------------------------------------------------------------
# the interleaved timing loop

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


def count_wrong_elements(got, expected, esize):
    a, b = _as_bytes(got), _as_bytes(expected)
    if a.nbytes != b.nbytes:
        return max(a.nbytes, b.nbytes) // max(esize, 1)
    if _memcmp(a.ctypes.data, b.ctypes.data, a.nbytes) == 0:
        return 0        # the usual case, without the element-wise temporaries (memcmp: ~1.6 ms per 11 MB)
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(esize)
    if view is None or a.nbytes % esize:
        return int(np.count_nonzero(a != b))
    return int(np.count_nonzero(a.view(view) != b.view(view)))


_libc = ctypes.CDLL(None)
_memcmp = _libc.memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]


def _as_bytes(x):
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if not t.is_contiguous():
            t = t.contiguous()
        return t.reshape(-1).view(torch.uint8).numpy()
    return np.ascontiguousarray(x).reshape(-1).view(np.uint8)


# ---------------------------------------------------------------------------------------------------
# rows: statistics per (size, implementation)

def make_rows(results, *, size, count, type_name, bound, P, alg_bytes, bus_factor, extra=None):
    """Rows for one size from ``run_interleaved``'s output. ``alg_bytes``: bytes per rank that define
    algbw (nccl-tests convention); busbw = algbw * bus_factor. ``extra[name]``: dict merged into the
    row (e.g. analytical inter-node bytes of a baseline)."""
    rows = []
    medians = {name: statistics.median(r["times_us"]) for name, r in results.items()}
    base = [medians[b] for b in BASELINES if b in medians]
    best_base = min(base) if base else None
    best_name = min((b for b in BASELINES if b in medians), key=lambda b: medians[b]) if base else None
    for name, r in results.items():
        t = medians[name]
        ex = (extra or {}).get(name, {})
        inter = r["inter_bytes_node"]
        inter_node = max(inter) if inter else ex.get("inter_bytes")
        row = {
            "size": size, "count": count, "type": type_name, "impl": name, "label": LABELS[name],
            "time_us": t, "min_us": min(r["times_us"]), "max_us": max(r["times_us"]),
            "p90_us": _percentile(r["times_us"], 90), "times_us": [round(v, 1) for v in r["times_us"]],
            "algbw_GBs": alg_bytes / t / 1e3 if t > 0 else 0.0,
            "busbw_GBs": alg_bytes / t / 1e3 * bus_factor if t > 0 else 0.0,
            "wrong": r["wrong"], "wrong_warmup": r["wrong_warmup"],
            "inter_node_bytes": inter_node,
            "inter_node_bytes_per_node": inter if inter else ex.get("inter_bytes_per_node"),
            "inter_node_bytes_source": "mw.stats" if inter else ("routing" if ex.get("inter_bytes") is not None else None),
            "wire_bytes": max(v for v in r["wire_bytes_node"]) if r["wire_bytes_node"] else None,
            "wire_bytes_per_node": r["wire_bytes_node"],
            "bound_us": bound,
            "time_per_bound": t / bound if bound else None,
            "vs_best_baseline": t / best_base if best_base else None,
            "best_baseline": best_name,
            "rank_median_us": [round(v, 1) for v in r["rank_median_us"]],
        }
        for key, value in ex.items():
            if key not in ("inter_bytes", "inter_bytes_per_node"):
                row[key] = value
        rows.append(row)
    return rows


def _percentile(values, q):
    v = sorted(values)
    if not v:
        return None
    i = min(len(v) - 1, max(0, int(math.ceil(q / 100 * len(v))) - 1))
    return v[i]


# ---------------------------------------------------------------------------------------------------
# table

COLUMNS = [("size", 8), ("count", 10), ("type", 9), ("impl", 11), ("time(us)", 11), ("algbw", 7),
           ("busbw", 7), ("#wrong", 6), ("inter-node B/op", 16), ("dedup", 6), ("bound(us)", 10),
           ("time/bound", 10), ("vs best base", 12)]


def _fmt_bytes(n):
    if n is None:
        return "-"
    if n >= 10 << 20:
        return f"{n / (1 << 20):.1f}Mi"
    if n >= 10 << 10:
        return f"{n / (1 << 10):.1f}Ki"
    return str(int(n))


def format_table(rows, title=None, wire=False):
    cols = list(COLUMNS) + ([("wire B/op", 10)] if wire else [])
    lines = []
    if title:
        lines.append(title)
    lines.append("#" + " ".join(f"{name:>{w}}" for name, w in cols)[1:])
    lines.append("#" + " ".join(f"{'':>{w}}" if name not in ("algbw", "busbw") else f"{'GB/s':>{w}}"
                                for name, w in cols)[1:])
    last = None
    for r in rows:
        if last is not None and r["size"] != last:
            lines.append("")
        last = r["size"]
        vals = [format_size(r["size"]), str(r["count"]), r["type"], r["label"], f"{r['time_us']:.1f}",
                f"{r['algbw_GBs']:.3f}", f"{r['busbw_GBs']:.3f}", str(r["wrong"]),
                _fmt_bytes(r.get("inter_node_bytes")),
                f"{r['dedup_ratio']:.2f}" if r.get("dedup_ratio") else "-",
                f"{r['bound_us']:.1f}" if r.get("bound_us") else "",
                f"{r['time_per_bound']:.2f}" if r.get("time_per_bound") else "",
                f"{r['vs_best_baseline']:.2f}" if r.get("vs_best_baseline") else "-"]
        if wire:
            vals.append(_fmt_bytes(r.get("wire_bytes")))
        lines.append(" ".join(f"{v:>{w}}" for v, (_, w) in zip(vals, cols)))
    return "\n".join(lines)


def summary_lines(doc):
    """One line per implementation: wrong total, geometric-mean ratio to the faster baseline."""
    out = []
    rows = doc["rows"]
    for name in IMPLS:
        mine = [r for r in rows if r["impl"] == name]
        if not mine:
            continue
        ratios = [r["vs_best_baseline"] for r in mine if r.get("vs_best_baseline")]
        tb = [r["time_per_bound"] for r in mine if r.get("time_per_bound")]
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None
        out.append(f"#  {LABELS[name]:>11}: #wrong {sum(r['wrong'] + r['wrong_warmup'] for r in mine)}"
                   + (f", time / faster baseline: geomean {gm:.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})"
                      if gm else "")
                   + (f", time/bound {min(tb):.2f}..{max(tb):.2f}" if tb else ""))
    return out


# ---------------------------------------------------------------------------------------------------
# JSON and plots

def run_metadata(ctx, args, rate, delay_us, rate_src):
    import multiwrite as mw
    topo = ctx.topo
    meta = {
        "command": " ".join([os.path.basename(sys.executable), "-m", "multiwrite.bench"] + sys.argv[1:]),
        "launcher": ctx.launcher, "world_size": ctx.size, "num_nodes": topo.num_nodes,
        "ranks_per_node": [len(r) for r in topo.node_ranks],
        "node_emulated": bool(os.environ.get("MULTIWRITE_RANKS_PER_NODE")),
        "vcluster": ctx.vcluster, "transport": ctx.g.transport.name, "rate_bps": rate,
        "barrier": ctx.barrier_mode, "order": args.order,
        "path_delay_us": delay_us, "rate_source": rate_src,
        "iters": args.iters, "warmup_iters": args.warmup_iters, "seed": args.seed,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "torch": torch.__version__, "multiwrite": mw.__version__, "loadavg_at_end": _loadavg(),
        "env": {k: v for k, v in os.environ.items()
                if k.startswith(("MULTIWRITE_", "VCLUSTER_")) or k in ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME")},
    }
    if ctx.comm is not None:
        meta["mpi"] = ctx.MPI.Get_library_version().strip().splitlines()[0]
    return meta


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


MARKERS = {"mpi": "s", "gloo": "^", "unicast": "v", "multiwrite": "o"}
COLORS = {"mpi": "tab:blue", "gloo": "tab:orange", "unicast": "tab:gray", "multiwrite": "tab:red"}


def plot(docs, path):
    """PNG: one panel per benchmark document, latency (median, p10..p90 whiskers) vs size per
    implementation, the physical bound dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    docs = [d for d in docs if d and d.get("rows")]
    if not docs:
        return
    fig, axes = plt.subplots(1, len(docs), figsize=(6.2 * len(docs), 4.6), squeeze=False)
    for ax, doc in zip(axes[0], docs):
        rows = doc["rows"]
        sizes = sorted({r["size"] for r in rows})
        for name in IMPLS:
            mine = sorted((r for r in rows if r["impl"] == name), key=lambda r: r["size"])
            if not mine:
                continue
            xs = [r["size"] for r in mine]
            ys = [r["time_us"] / 1e3 for r in mine]
            lo = [max(0.0, (r["time_us"] - r["min_us"]) / 1e3) for r in mine]
            hi = [max(0.0, (r["p90_us"] - r["time_us"]) / 1e3) for r in mine]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker=MARKERS[name], color=COLORS[name], capsize=2,
                        label=LABELS[name] + (" (baseline)" if name in BASELINES else ""))
        bx = [s for s in sizes if _bound_of(rows, s)]
        if bx:
            ax.plot(bx, [_bound_of(rows, s) / 1e3 for s in bx], "k--", label="physical bound")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([format_size(s) for s in sizes], rotation=45)
        ax.set_xlabel(doc.get("size_label", "bytes per rank"))
        ax.set_ylabel("latency (ms, median; whiskers min..p90)")
        ax.set_title(doc.get("title", doc.get("benchmark", "")), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    meta = docs[0].get("meta", {})
    rate = meta.get("rate_bps")
    where = f"{meta.get('num_nodes')} nodes x {meta.get('ranks_per_node', ['?'])[0]} ranks"
    if rate:
        where += f", {rate / 1e9:g} Gbit/s links, {meta.get('path_delay_us', 0):g} us node-to-node"
    cc = meta.get("env", {}).get("MULTIWRITE_VCLUSTER_TCP_CC")
    if cc:
        where += f", TCP {cc}"
    fig.suptitle(f"multiwrite benchmarks: {where} ({meta.get('launcher')}, {meta.get('transport')} transport)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bound_of(rows, size):
    for r in rows:
        if r["size"] == size and r.get("bound_us"):
            return r["bound_us"]
    return None


# ---------------------------------------------------------------------------------------------------
# driver shared by the benchmark modules

def emit(ctx, args, docs, *, json_path=None, plot_path=None):
    """Rank 0: tables to stdout, JSON, plot. Returns 1 if any row has a wrong element."""
    wrong = sum(r["wrong"] + r["wrong_warmup"] for d in docs for r in d["rows"])
    if ctx.rank == 0:
        wire = ctx.wire is not None
        for d in docs:
            print(format_table(d["rows"], title=d["header"], wire=wire))
            for line in summary_lines(d):
                print(line)
            print(flush=True)
        if wrong:
            print(f"# ERROR: {wrong} wrong element(s) (see #wrong)", flush=True)
        json_path = json_path or args.json
        if json_path:
            doc = docs[0] if len(docs) == 1 else {"benchmark": "all", "meta": docs[0]["meta"],
                                                  "benchmarks": docs,
                                                  "rows": [dict(r, benchmark=d["benchmark"]) for d in docs
                                                           for r in d["rows"]]}
            write_json(json_path, doc)
            print(f"# JSON: {json_path}", file=sys.stderr, flush=True)
        plot_path = plot_path or args.plot
        if plot_path:
            plot(docs, plot_path)
            print(f"# plot: {plot_path}", file=sys.stderr, flush=True)
    return 1 if wrong else 0


def show(path, file=None):
    """Print the tables of a JSON written by --json (one benchmark or 'all')."""
    with open(path) as f:
        doc = json.load(f)
    docs = doc.get("benchmarks") or [doc]
    wire = any(r.get("wire_bytes") for d in docs for r in d["rows"])
    out = file or sys.stdout
    for d in docs:
        print(format_table(d["rows"], title=d.get("header"), wire=wire), file=out)
        for line in summary_lines(d):
            print(line, file=out)
        print(file=out)
    wrong = sum(r["wrong"] + r["wrong_warmup"] for d in docs for r in d["rows"])
    print(f"# {'all results checked: 0 wrong elements' if not wrong else f'ERROR: {wrong} wrong elements'}",
          file=out, flush=True)
    return 1 if wrong else 0


def header_lines(ctx, what, args, rate, delay_us, extra=""):
    topo = ctx.topo
    per = "+".join(str(len(r)) for r in topo.node_ranks)
    where = "vcluster" if ctx.vcluster else ("emulated nodes (MULTIWRITE_RANKS_PER_NODE)"
                                             if os.environ.get("MULTIWRITE_RANKS_PER_NODE") else "detected nodes")
    link = f"links {rate / 1e9:g} Gbit/s, node-to-node latency {delay_us:g} us" if rate else \
        "link rate unknown (no bound; pass --rate/--delay)"
    if os.environ.get("MULTIWRITE_VCLUSTER_TCP_CC"):
        link += f", TCP congestion control {os.environ['MULTIWRITE_VCLUSTER_TCP_CC']}"
    return (f"# multiwrite bench {what}: {ctx.size} ranks on {topo.num_nodes} nodes ({per}, {where}); "
            f"launcher {ctx.launcher}, multiwrite transport {ctx.g.transport.name}\n"
            f"# {link}; median of {args.iters} iterations after {args.warmup_iters} warm-up, "
            f"time = max over ranks; interleaved, order {args.order}; barrier: {ctx.barrier_mode}{extra}\n"
            f"# algbw/busbw in GB/s (1e9 B/s); inter-node B/op = bytes leaving the busiest node per call "
            f"(multiwrite: mw.stats(), baselines: from the data they send); dedup = non-dedup bytes / these "
            f"bytes; vs best base = time / faster of MPI and Gloo")


def fail(ctx, msg):
    if ctx is None or ctx.rank == 0:
        print(f"error: {msg}", file=sys.stderr, flush=True)
    return 2


# ---------------------------------------------------------------------------------------------------
# "all": allgather, dispatch and combine in one run (one launch, one JSON, one plot)

DOCS = {"all": """All three collective benchmarks in one launch: allgather, then dispatch, then combine.

-b/-e/-f set the AllGather sizes (bytes per rank, default 4K..4M); -T sets the MoE token counts
(default 256; a range like 64..1024 sweeps). The MoE workload flags (-E -k -H --routing --zipf) and
every common flag apply as in the single benchmarks (python -m multiwrite.bench allgather --help,
dispatch --help, combine --help). --json writes one document with every row (field "benchmark"),
--plot one PNG with a panel per benchmark. Exit status 1 if any result was wrong.
"""}


def add_arguments(parser, name="all"):
    from . import moe
    add_common_arguments(parser, sizes_help="AllGather bytes per rank, smallest size (default 4K)")
    moe.add_workload_arguments(parser)


def main(args):
    from . import allgather, moe
    try:
        check_common_args(args)
        ag_sizes = sizes_from_args(args, allgather.DEFAULT_MIN, allgather.DEFAULT_MAX)
        esize = torch.empty(0, dtype=DTYPES[args.dtype]).element_size()
        saved, args.minbytes = args.minbytes, None
        tokens = moe.token_counts(args, args.hidden * esize)
        args.minbytes = saved
    except ValueError as e:
        return fail(None, str(e))
    ctx = Context(barrier=args.barrier)
    try:
        try:
            moe.check_workload(args, ctx.size)
        except ValueError as e:
            return fail(ctx, str(e))
        docs = [allgather.bench(ctx, args, ag_sizes)]
        docs.append(moe.bench(ctx, args, "dispatch", tokens))
        docs.append(moe.bench(ctx, args, "combine", tokens))
        return emit(ctx, args, docs)
    finally:
        ctx.close()
