"""The final summary of a stress run (text and JSON): latencies per operation, bytes verified and
wrong, RSS per rank and its growth after the warm-up, trends by quarter."""
import json

from .._util import format_bytes, format_duration, percentile
from .workloads import OPS

NAN = float("nan")


def summary(args, topo, g, everyone, elapsed):
    """Rank 0: the final summary of every rank's results: {"text": the lines to print, ...: the JSON fields}."""
    P = len(everyone)
    steps = everyone[0]["steps"]
    ops = {}
    lines = [f"stress summary: {P} ranks on {topo.num_nodes} nodes, transport {g.transport.name}, "
             f"{format_duration(elapsed)} ({elapsed:.0f}s), {steps} steps (first {everyone[0]['warm_steps']} = warm-up: "
             f"{everyone[0]['warm_steps'] - args.warmup} at maximum sizes, then {args.warmup} random), seed {args.seed}"]
    lines.append(f"  {'op':<11}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}   (time of a call = max over ranks)")
    for op in OPS:
        per_step = {}
        for r in everyone:
            for step, dt in r["lat"][op]:
                per_step[step] = max(per_step.get(step, 0.0), dt)
        vals = list(per_step.values())
        n = everyone[0]["count"][op]
        ops[op] = {"count": n, "p50_ms": percentile(vals, 50, NAN) * 1e3 if vals else None,
                   "p99_ms": percentile(vals, 99, NAN) * 1e3 if vals else None, "max_ms": max(vals) * 1e3 if vals else None}
        if n:
            lines.append(f"  {op:<11}{n:>8}{ops[op]['p50_ms'] or 0:>10.2f}{ops[op]['p99_ms'] or 0:>10.2f}"
                         f"{ops[op]['max_ms'] or 0:>10.2f}")
    verified = sum(r["verified"] for r in everyone)
    wrong = sum(r["wrong"] for r in everyone)
    counts = ", ".join(f"{op} {everyone[0]['count'][op]}" for op in OPS)
    lines.append(f"  ops done: {steps} ({counts})")
    lines.append(f"  bytes verified: {verified} ({format_bytes(verified)}, all ranks)")
    lines.append(f"  wrong bytes: {wrong}" + ("" if not wrong else "  <-- FAILED: " + "; ".join(
        f"rank {r}: first at step #{e['first_wrong'][0]} ({e['first_wrong'][1]})"
        for r, e in enumerate(everyone) if e["first_wrong"])))
    lines.append("  RSS per rank (MiB): start / after warm-up / end (growth after warm-up)"
                 "   [anon + shmem at warm-up -> end]")
    rss = []
    for r, e in enumerate(everyone):
        s, w, en = e["rss"]["start"], e["rss"]["warm"], e["rss"]["end"]
        gr = en["rss"] - w["rss"]
        pct = 100.0 * gr / w["rss"] if w["rss"] > 0 else float("nan")
        rss.append({"rank": r, "start_mib": round(s["rss"], 1), "warm_mib": round(w["rss"], 1),
                    "end_mib": round(en["rss"], 1), "growth_mib": round(gr, 1), "growth_pct": round(pct, 2),
                    "anon_mib": {k: round(v["anon"], 1) for k, v in (("start", s), ("warm", w), ("end", en))},
                    "shmem_mib": {k: round(v["shmem"], 1) for k, v in (("start", s), ("warm", w), ("end", en))}})
        pk = e.get("rss_peak", {})
        pk_gr = pk.get("rss", float("nan")) - w["rss"]
        rss[-1].update(peak_mib=round(pk.get("rss", float("nan")), 1), peak_growth_mib=round(pk_gr, 1),
                       peak_growth_pct=round(100.0 * pk_gr / w["rss"], 2) if w["rss"] > 0 else None,
                       peak_at_s=pk.get("seconds"))
        lines.append(f"    rank {r}: {s['rss']:8.1f} / {w['rss']:8.1f} / {en['rss']:8.1f}  ({gr:+.1f}, {pct:+.1f}%)"
                     f"   [anon {w['anon']:.0f} -> {en['anon']:.0f}, shmem {w['shmem']:.0f} -> {en['shmem']:.0f};"
                     f" highest after warm-up {pk.get('rss', float('nan')):.1f} ({pk_gr:+.1f}) at {pk.get('seconds', '?')}s]")
    for r, e in enumerate(everyone):
        rss[r]["buffers_mib"] = e.get("buffers")
    grown = [(r, e["buffers"]["warm"], e["buffers"]["end"]) for r, e in enumerate(everyone)
             if e.get("buffers") and e["buffers"]["end"] != e["buffers"]["warm"]]
    b0 = everyone[0].get("buffers", {}).get("end", {})
    lines.append(f"  grow-only buffers (rank 0 at the end, MiB): node-shared {b0.get('node_shared')}, private "
                 f"{b0.get('private')}, driver {b0.get('driver')}; "
                 + ("unchanged after warm-up on every rank" if not grown else
                    "GREW after warm-up on rank(s) " + ", ".join(f"{r} ({w} -> {en})" for r, w, en in grown)))
    trimmed = [(r, e["rss"]["warm_trimmed"]["rss"], e["rss"]["end_trimmed"]["rss"]) for r, e in enumerate(everyone)
               if "end_trimmed" in e["rss"]]
    if trimmed:
        for r, w, en in trimmed:
            rss[r].update(warm_trimmed_mib=round(w, 1), end_trimmed_mib=round(en, 1),
                          trimmed_growth_mib=round(en - w, 1), trimmed_growth_pct=round(100.0 * (en - w) / w, 2))
        for r, e in enumerate(everyone):
            if "end_trimmed" in e["rss"]:
                rss[r]["anon_trimmed_mib"] = {"warm": round(e["rss"]["warm_trimmed"]["anon"], 1),
                                              "end": round(e["rss"]["end_trimmed"]["anon"], 1)}
        lines.append("  RSS right after malloc_trim(0) at warm-up / end (memory in use, without the free heap "
                     "glibc keeps), total [anon]: "
                     + ", ".join(f"rank {r} {w:.0f} / {en:.0f} ({en - w:+.1f}) [{rss[r]['anon_trimmed_mib']['warm']:.0f}"
                                 f" / {rss[r]['anon_trimmed_mib']['end']:.0f}]" for r, w, en in trimmed))
    worst = max(rss, key=lambda x: x["growth_mib"])
    growth, growth_pct = worst["growth_mib"], max(x["growth_pct"] for x in rss)
    peak_gr = max((x["peak_growth_mib"] for x in rss if x["peak_growth_mib"] == x["peak_growth_mib"]), default=None)
    peak_pct = max((x["peak_growth_pct"] for x in rss if x["peak_growth_pct"] is not None
                    and x["peak_growth_pct"] == x["peak_growth_pct"]), default=None)
    in_use = max(((x["trimmed_growth_mib"], x["trimmed_growth_pct"]) for x in rss if "trimmed_growth_mib" in x),
                 default=None)
    lines.append(f"  max RSS growth after warm-up: {growth:+.1f} MiB ({growth_pct:+.1f}%) at the end"
                 + (f" (in use, after malloc_trim: {in_use[0]:+.1f} MiB ({in_use[1]:+.1f}%))" if in_use else "")
                 + (f"; highest RSS after warm-up: {peak_gr:+.1f} MiB ({peak_pct:+.1f}%) above the warm-up point"
                    if peak_gr is not None else ""))
    # trends over the run, by quarter (steps split by rank 0's clock): latency and memory
    tl = everyone[0]["timeline"]
    quarters = []
    if len(tl) >= 2 and elapsed > 0:
        for q in range(4):
            t_lo, t_hi = elapsed * q / 4, elapsed * (q + 1) / 4
            qsteps = [m[0] for m in tl if t_lo <= m[1] <= t_hi] or [0]
            s_lo = max([m[0] for m in tl if m[1] <= t_lo] or [0])
            s_hi = min([m[0] for m in tl if m[1] >= t_hi] or [qsteps[-1]])
            entry = {"from_s": round(t_lo), "to_s": round(t_hi), "steps": [s_lo, s_hi], "p50_ms": {},
                     "rss_max_mib": max(max((m[2] for m in e["timeline"] if m[1] <= t_hi), default=0)
                                        for e in everyone)}
            for op in OPS:
                per_step = {}
                for e in everyone:
                    for step, dt in e["lat"][op]:
                        if s_lo <= step < s_hi:
                            per_step[step] = max(per_step.get(step, 0.0), dt)
                if per_step:
                    entry["p50_ms"][op] = round(percentile(list(per_step.values()), 50, NAN) * 1e3, 2)
            quarters.append(entry)
        lines.append("  trend by quarter of the run: p50 ms per op (max over ranks) | largest RSS so far (MiB)")
        for qd in quarters:
            lines.append(f"    {format_duration(qd['from_s'])}-{format_duration(qd['to_s'])}: "
                         + "  ".join(f"{op} {v:.1f}" for op, v in qd["p50_ms"].items())
                         + f" | {qd['rss_max_mib']:.0f}")
    lines.append("  RESULT: " + ("PASS (0 wrong bytes)" if not wrong else f"FAIL ({wrong} wrong bytes)"))
    return {"text": "\n".join(lines), "ranks": P, "nodes": topo.num_nodes, "transport": g.transport.name,
            "duration_s": elapsed, "steps": steps, "warmup": args.warmup, "warmup_steps": everyone[0]["warm_steps"], "seed": args.seed, "ops": ops,
            "bytes_verified": verified, "wrong_bytes": wrong, "rss": rss, "max_rss_growth_mib": growth,
            "max_rss_growth_pct": growth_pct, "max_rss_peak_growth_mib": peak_gr, "max_rss_peak_growth_pct": peak_pct,
            "max_rss_in_use_growth_mib": in_use[0] if in_use else None,
            "max_rss_in_use_growth_pct": in_use[1] if in_use else None,
            "rss_timeline_columns": ["step", "seconds", "rss_mib", "anon_mib", "shmem_mib"],
            "trend": quarters, "rss_timeline": {r: e["timeline"] for r, e in enumerate(everyone)},
            "args": {k: v for k, v in vars(args).items()}}


def write_json(path, result):
    """The summary without its text, as JSON."""
    with open(path, "w") as f:
        json.dump({k: v for k, v in result.items() if k != "text"}, f, indent=1)
        f.write("\n")
