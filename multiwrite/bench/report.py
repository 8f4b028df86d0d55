"""Results of the collective benchmarks: rows (statistics per size and implementation), the table
and summary lines, the header, run metadata, JSON, and what rank 0 prints and writes at the end."""
import datetime
import json
import math
import os
import platform
import statistics
import sys

import torch

from .._util import format_bytes_short, format_size, percentile
from .options import BASELINES, IMPLS, LABELS
from .plot import plot


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
            "p90_us": percentile(r["times_us"], 90), "times_us": [round(v, 1) for v in r["times_us"]],
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



# ---------------------------------------------------------------------------------------------------
# table

COLUMNS = [("size", 8), ("count", 10), ("type", 9), ("impl", 11), ("time(us)", 11), ("algbw", 7),
           ("busbw", 7), ("#wrong", 6), ("inter-node B/op", 16), ("dedup", 6), ("bound(us)", 10),
           ("time/bound", 10), ("vs best base", 12)]


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
                format_bytes_short(r.get("inter_node_bytes")),
                f"{r['dedup_ratio']:.2f}" if r.get("dedup_ratio") else "-",
                f"{r['bound_us']:.1f}" if r.get("bound_us") else "",
                f"{r['time_per_bound']:.2f}" if r.get("time_per_bound") else "",
                f"{r['vs_best_baseline']:.2f}" if r.get("vs_best_baseline") else "-"]
        if wire:
            vals.append(format_bytes_short(r.get("wire_bytes")))
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


