"""PNG plot of benchmark documents: latency vs size per implementation, the physical bound dashed."""
from .._util import format_size
from .options import BASELINES, IMPLS, LABELS

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

