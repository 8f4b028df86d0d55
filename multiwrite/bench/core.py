"""C++ core: pack_records / unpack_records throughput beside a plain memcpy (np.copyto).

For each payload size S: M = S / row_bytes dispatch records (rows of H bf16 values, k expert slots)
packed from every other token of a [2M, row_bytes] input, and unpacked for one local rank that is
in every record's bitmap. Each operation moves the same M * record_size bytes that memcpy copies;
the three are timed in turns; the table shows the median over --repeats of GB/s (1e9 bytes/s)
and of the per-turn speed ratio to memcpy (>= 1: as fast as memcpy).
"""
import json
import statistics
import sys
import time

import numpy as np

from .._util import format_size, parse_sizes
from .. import _core

DEFAULT_SIZES = "64K..64M"


def add_arguments(parser):
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="payload sizes: a range LO..HI in powers of 4 (default %(default)s) or a list 1M,4M")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per size; the median is reported")
    parser.add_argument("--hidden", type=int, default=4096, help="H: bf16 values per row (row_bytes = 2H)")
    parser.add_argument("--topk", type=int, default=8, help="k: expert slots per token")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' for stdout)")


def _interleaved(fns, inner, repeats):
    """Median seconds per call of each function, timed in turns (A B C A B C ...) so that load from
    other processes hits all of them alike; also the per-turn ratios to the first one."""
    for fn in fns:                                  # warm-up (page faults, caches), not counted
        fn()
        fn()
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[i].append((time.perf_counter() - t0) / inner)
    medians = [statistics.median(s) for s in samples]
    ratios = [statistics.median(a / b for a, b in zip(samples[0], s)) for s in samples]
    return medians, ratios


def run_size(size, row_bytes, k, repeats, seed=0):
    rng = np.random.default_rng(seed)
    M = max(1, size // row_bytes)
    T = 2 * M
    rs = _core.record_size(row_bytes, k)
    nbytes = M * rs
    x = rng.integers(0, 256, size=(T, row_bytes), dtype=np.uint8)
    topk = rng.integers(-1, 256, size=(T, k)).astype(np.int64)
    w = rng.random((T, k), dtype=np.float32)
    token_idx = np.sort(rng.choice(T, size=M, replace=False)).astype(np.int64)
    bitmaps = (rng.integers(0, 256, size=M).astype(np.uint64) | np.uint64(1))   # local rank 0 gets every record
    packed = np.zeros(nbytes, np.uint8)
    copy_dst = np.zeros(nbytes, np.uint8)
    ox = np.zeros((M, row_bytes), np.uint8)
    osrc = np.zeros(M, np.int64)
    oidx = np.zeros((M, k), np.int64)
    ow = np.zeros((M, k), np.float32)

    def pack():
        _core.pack_records(x, topk, w, token_idx, bitmaps, packed)

    def unpack():
        _core.unpack_records(packed, row_bytes, k, 0, 0, 32, ox, osrc, oidx, ow)

    def memcpy():
        np.copyto(copy_dst, packed)

    pack()
    unpack()
    wrong = int((ox != x[token_idx]).any(axis=1).sum() + (osrc != token_idx).sum())
    inner = max(1, (32 << 20) // nbytes)
    (t_copy, t_pack, t_unpack), (_, pack_ratio, unpack_ratio) = _interleaved([memcpy, pack, unpack], inner, repeats)
    gbs = lambda t: nbytes / t / 1e9
    return {"size": size, "records": M, "bytes": nbytes,
            "memcpy_gbs": gbs(t_copy), "pack_gbs": gbs(t_pack), "unpack_gbs": gbs(t_unpack),
            "pack_ratio": pack_ratio, "unpack_ratio": unpack_ratio,
            "memcpy_us": t_copy * 1e6, "pack_us": t_pack * 1e6, "unpack_us": t_unpack * 1e6, "wrong": wrong}


def main(args):
    try:
        sizes = parse_sizes(args.sizes)
    except ValueError as e:
        print(f"error: --sizes: {e}", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.hidden < 1 or args.topk < 0:
        print("error: --repeats and --hidden must be >= 1, --topk >= 0", file=sys.stderr)
        return 2
    row_bytes, k = 2 * args.hidden, args.topk
    print(f"# core pack/unpack vs memcpy: rows of {args.hidden} bf16 ({row_bytes} B), k={k}, "
          f"record {_core.record_size(row_bytes, k)} B, median of {args.repeats}")
    header = f"{'size':>8} {'memcpy GB/s':>12} {'pack GB/s':>10} {'pack/memcpy':>12} {'unpack GB/s':>12} " \
             f"{'unpack/memcpy':>14} {'#wrong':>7}"
    print(header)
    rows = []
    for size in sizes:
        r = run_size(size, row_bytes, k, args.repeats)
        rows.append(r)
        print(f"{format_size(size):>8} {r['memcpy_gbs']:12.2f} {r['pack_gbs']:10.2f} {r['pack_ratio']:12.2f} "
              f"{r['unpack_gbs']:12.2f} {r['unpack_ratio']:14.2f} {r['wrong']:7d}", flush=True)
    if args.json:
        doc = {"benchmark": "core", "hidden": args.hidden, "row_bytes": row_bytes, "k": k,
               "record_size": _core.record_size(row_bytes, k), "repeats": args.repeats, "rows": rows}
        text = json.dumps(doc, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 1 if any(r["wrong"] for r in rows) else 0
