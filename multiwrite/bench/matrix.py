"""The shape matrix: one table and one plot from the JSON documents of several benchmark runs (one run
per cluster shape and launcher, e.g. written by scripts/bench_matrix.sh).

    python -m multiwrite.bench.matrix RUN.json [RUN.json ...] [--md TABLE.md] [--plot MATRIX.png]

Each cell is MultiWrite's median time divided by the faster of the baselines measured in the same run
(MPI's and Gloo's own collectives; under torchrun only Gloo's), with time / physical bound in
parentheses; a cell above 1.0 means MultiWrite was slower there. A column is one run (shape NxL and
launcher, read from the document's metadata); a row is one operation and size (AllGather bytes per
rank, dispatch/combine tokens per rank).
"""
import argparse
import json
import math
import sys

from .._util import format_size

_OPS = ("allgather", "dispatch", "combine")


def _column(doc, path):
    """(label, sort key) of a run: its shape and launcher, from the document's metadata."""
    meta = doc.get("meta") or {}
    nodes, world = meta.get("num_nodes"), meta.get("world_size")
    launcher = meta.get("launcher") or "?"
    if nodes and world:
        per = world // nodes
        return f"{nodes}x{per} {launcher}", (-per, nodes, launcher)
    return path, (0, 0, path)


def _rows(doc):
    """{(op, size): row of multiwrite} of one document (an ``all`` document or a single benchmark's)."""
    out = {}
    for r in doc.get("rows", []):
        if r.get("impl") != "multiwrite":
            continue
        op = r.get("benchmark") or doc.get("benchmark")
        size = r.get("tokens") if op in ("dispatch", "combine") else r.get("size")
        if op in _OPS and size is not None:
            out[(op, int(size))] = r
    return out


def load(paths):
    """[(column label, {(op, size): row})], ordered by ranks per node (most first), nodes, launcher."""
    cols = []
    for p in paths:
        with open(p) as f:
            doc = json.load(f)
        label, key = _column(doc, p)
        cols.append((key, label, _rows(doc)))
    cols.sort(key=lambda c: c[0])
    return [(label, rows) for _, label, rows in cols]


def _cell(row):
    if row is None:
        return "–"
    ratio, tb = row.get("vs_best_baseline"), row.get("time_per_bound")
    if ratio is None:
        return "–"
    mark = " ✗" if ratio > 1.0 else ""
    wrong = " WRONG" if row.get("wrong") else ""
    path = " ᴸ" if row.get("path") == "low_latency" else ""
    return f"{ratio:.2f}{mark}" + (f" ({tb:.2f})" if tb else "") + path + wrong


def _size_label(op, size):
    return f"AllGather {format_size(size)}" if op == "allgather" else f"{op} T={size}"


def table(cols):
    """Markdown table: a row per (op, size), a column per run."""
    keys = sorted({k for _, rows in cols for k in rows}, key=lambda k: (_OPS.index(k[0]), k[1]))
    lines = ["| operation, size | " + " | ".join(label for label, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for k in keys:
        lines.append(f"| {_size_label(*k)} | " + " | ".join(_cell(rows.get(k)) for _, rows in cols) + " |")
    slower = sum(1 for _, rows in cols for r in rows.values()
                 if r.get("vs_best_baseline") is not None and r["vs_best_baseline"] > 1.0)
    cells = sum(1 for _, rows in cols for r in rows.values() if r.get("vs_best_baseline") is not None)
    lines.append("")
    lines.append(f"{cells} cells; MultiWrite slower than the faster baseline (✗) in {slower}. Cell: MultiWrite ÷ "
                 f"faster of MPI's and Gloo's own (time ÷ physical bound); ᴸ: MoE call on the low-latency path.")
    return "\n".join(lines)


def plot(cols, path):
    """PNG heat map of the ratios (green below 1, red above), the ratio written in each cell."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    keys = sorted({k for _, rows in cols for k in rows}, key=lambda k: (_OPS.index(k[0]), k[1]))
    data = [[(rows.get(k) or {}).get("vs_best_baseline") for _, rows in cols] for k in keys]
    grid = [[math.nan if v is None else v for v in row] for row in data]
    fig, ax = plt.subplots(figsize=(1.6 * len(cols) + 3, 0.32 * len(keys) + 1.5))
    im = ax.imshow(grid, cmap="RdYlGn_r", norm=TwoSlopeNorm(vmin=0.2, vcenter=1.0, vmax=2.0), aspect="auto")
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([label for label, _ in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([_size_label(*k) for k in keys], fontsize=7)
    fig.colorbar(im, ax=ax, label="MultiWrite ÷ faster baseline")
    ax.set_title("MultiWrite ÷ faster of MPI's and Gloo's own (same run, medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m multiwrite.bench.matrix", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="benchmark JSON documents (python -m multiwrite.bench ... --json)")
    ap.add_argument("--md", help="also write the table to this file")
    ap.add_argument("--plot", help="write the heat map to this PNG (needs matplotlib)")
    args = ap.parse_args(argv)
    try:
        cols = load(args.runs)
    except (OSError, ValueError) as exc:
        ap.error(str(exc))
    text = table(cols)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    if args.plot:
        plot(cols, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
