"""The stress run of one rank: start-up, the loop of verified steps with agreements on stopping,
progress and memory readings, the failure path (clear message, no hang), and the final exchange."""
import array
import os
import sys
import time

import torch

from .._util import format_bytes, format_duration, percentile
from . import faults
from .memory import malloc_trim, rss_detail, runtime_buffers_mib, touch_shared_pages
from .progress import Bar
from .report import summary, write_json
from .workloads import OPS, Stress

NAN = float("nan")


def run(args):
    """One rank's stress run: the steps until --duration, then the summary (rank 0); returns the exit status."""
    if args.timeout is not None:
        os.environ["MULTIWRITE_TIMEOUT"] = str(args.timeout)
    import multiwrite as mw
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    state = {"step": -1, "op": "init"}
    t_start = time.monotonic()
    faults.report_sigterm(state, t_start)
    mw.init()
    g = mw.default_group()
    topo = mw.topology()
    P, me = topo.world_size, topo.rank
    faults.check_ranks(args, P)
    stress = Stress(args, mw, state)
    warm_steps = len(stress.prologue) + args.warmup
    rss = {"start": rss_detail()}
    bufs = {"start": runtime_buffers_mib(g, stress)}
    peak = {"rss": float("nan")}
    bar = Bar(me == 0 and not args.quiet, args.duration, args.progress_interval)
    if me == 0:
        print(f"stress: {P} ranks on {topo.num_nodes} nodes ({'+'.join(str(len(r)) for r in topo.node_ranks)}), "
              f"transport {g.transport.name}, ops {','.join(stress.ops)}, duration {format_duration(args.duration)}, "
              f"seed {args.seed}, max {format_bytes(args.max_bytes)}, timeout {g.timeout_s:g}s, malloc mmap "
              f"threshold {format_bytes(args.malloc_mmap_threshold) if args.malloc_mmap_threshold > 0 else 'glibc default'}"
              + faults.describe(args), flush=True)
    faults.note_without_ft(args, g, me)
    faults.arm(args, me, t_start)

    def reset_windows(i):
        """The same window set at the warm-up point and at the end, whatever the mix freed and created
        in between (random sizes): MAX_WINDOWS windows of the largest size, every byte written; so
        that both RSS readings count the same windows. Verified steps like the others; returns i."""
        if not stress.window_specs():
            return i
        for win, _, _ in stress.windows:
            win.free()
        stress.windows.clear()
        for op_, spec in stress.window_specs():
            state["step"] = i
            op, v, w, dt = stress.run_spec(i, op_, spec)
            tally(i, op, v, w)
            i += 1
        return i

    def tally(i, op, v, w):
        """Count step i's verified and wrong bytes; the first wrong step is reported at once."""
        nonlocal verified, wrong, first_wrong
        count[op] += 1
        verified += v
        wrong += w
        if w and first_wrong is None:
            first_wrong = (i, op, w)
            print(f"stress: rank {me}: WRONG: step #{i} {op}: {w} wrong byte(s)", file=sys.stderr, flush=True)

    # (steps, seconds) of this rank's calls after warm-up, as compact arrays (12 bytes a call, not a
    # tuple of ~100): the statistics of a 30-minute run must not show up as memory growth
    lat = {op: (array.array("q"), array.array("d")) for op in OPS}
    count = {op: 0 for op in OPS}
    verified = wrong = 0
    first_wrong = None
    i = 0
    t0 = time.monotonic()
    timeline = []                 # (step, seconds, RSS MiB) about every 5% of the run
    sample_every, next_sample = max(5.0, args.duration / 20), 0.0
    try:
        while True:
            state["step"] = i
            state["op"] = "?"
            op, v, w, dt = stress.step(i)
            state["op"] = op
            tally(i, op, v, w)
            if i >= warm_steps:
                lat[op][0].append(i)
                lat[op][1].append(dt)
            i += 1
            if i == warm_steps:
                i = reset_windows(i)
                touch_shared_pages(g, stress.windows)
                rss["warm"] = rss_detail()
                if malloc_trim():
                    rss["warm_trimmed"] = rss_detail()
                peak.update(warm=True, rss=rss["warm"]["rss"], step=i, seconds=round(time.monotonic() - t0, 1))
                bufs["warm"] = runtime_buffers_mib(g, stress)
                if os.environ.get("MW_STRESS_OBJECTS"):    # diagnostic: Python objects that pile up
                    import collections
                    import gc
                    gc.collect()
                    objs_warm = collections.Counter(type(o).__name__ for o in gc.get_objects())
            if i % args.sync_every == 0:
                state["op"] = "agreement on stopping"
                elapsed = time.monotonic() - t0
                if i > warm_steps:               # the highest RSS after the warm-up, not only the end
                    m = rss_detail()["rss"]
                    if m > peak["rss"]:
                        peak.update(rss=m, step=i, seconds=round(elapsed, 1))
                if elapsed >= next_sample:       # RSS over time: a leak grows, buffers plateau
                    m = rss_detail()
                    timeline.append((i, round(elapsed, 1), round(m["rss"], 1), round(m["anon"], 1),
                                     round(m["shmem"], 1)))
                    next_sample = elapsed + sample_every
                flags = g.allgather_obj((elapsed >= args.duration, wrong))
                stop = flags[0][0]
                total_wrong = sum(f[1] for f in flags)
                pct = "  ".join(f"{op[:4]} {percentile(lat[op][1][-2000:], 50, NAN) * 1e3:.1f}/"
                                f"{percentile(lat[op][1][-2000:], 99, NAN) * 1e3:.1f}"
                                for op in OPS if lat[op][1])
                bar.show(elapsed, f"ops {i}  verified {format_bytes(verified)} (rank 0)  wrong {total_wrong} B"
                         + (f"  p50/p99 ms: {pct}" if pct else ""))
                if stop:
                    break
        if "warm" in rss:
            i = reset_windows(i)
    except Exception as exc:  # a peer died or hung, or a runtime error: clear message, no hang
        elapsed = time.monotonic() - t_start
        print(f"stress: rank {me}: FAILED in step #{state['step']} ({state['op']}) after {elapsed:.1f}s: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        faults.survivors_agree(g, g.timeout_s + 2.0)
        os._exit(3)     # skip finalize: peers may be gone and requests pending
    elapsed = time.monotonic() - t0
    rss.setdefault("warm", rss["start"])
    # the end is measured in the same state as the warm-up point (windows: see above)
    bufs.setdefault("warm", bufs["start"])
    bufs["end"] = runtime_buffers_mib(g, stress)
    if os.environ.get("MW_STRESS_OBJECTS") and "warm" in rss:
        import collections
        import gc
        gc.collect()
        objs_end = collections.Counter(type(o).__name__ for o in gc.get_objects())
        diff = sorted(((objs_end[k] - objs_warm.get(k, 0), k) for k in objs_end), reverse=True)[:8]
        print(f"stress: rank {me}: objects tracked by gc, growth after warm-up: "
              + ", ".join(f"{k} {d:+d}" for d, k in diff), file=sys.stderr, flush=True)
    touch_shared_pages(g, stress.windows)
    rss["end"] = rss_detail()
    if "warm_trimmed" in rss and malloc_trim():
        rss["end_trimmed"] = rss_detail()
    if "warm" not in peak:
        peak["rss"] = float("nan")
    elif rss["end"]["rss"] > peak["rss"]:
        peak.update(rss=rss["end"]["rss"], step=i, seconds=round(elapsed, 1))
    for win, _, _ in stress.windows:
        win.free()
    stress.windows.clear()
    stress.moe = None
    mine = {"count": count, "lat": {op: list(zip(*lat[op])) for op in OPS}, "verified": verified, "wrong": wrong,
            "rss": rss, "rss_peak": peak, "buffers": bufs, "first_wrong": first_wrong, "steps": i, "warm_steps": warm_steps, "timeline": timeline + [(i, round(elapsed, 1), round(rss["end"]["rss"], 1), round(rss["end"]["anon"], 1),
                                   round(rss["end"]["shmem"], 1))]}
    everyone = g.allgather_obj(mine)
    code = 0
    if me == 0:
        result = summary(args, topo, g, everyone, elapsed)
        bar.show(elapsed, f"ops {i} done", force=True)
        print(result["text"], flush=True)
        if args.json:
            write_json(args.json, result)
        code = 1 if result["wrong_bytes"] else 0
    code = g.allgather_obj(code)[0]
    return code
