"""Phase timeline of one operation on every rank: where the time of an all_gather, dispatch or combine goes.

Run under a launcher, e.g. on the 2 x 4 virtual cluster:

    launch/vcluster --nodes 2 --ranks-per-node 4 --rate 1gbit --delay 100us --launcher mpirun \\
        --launcher-arg=--bind-to --launcher-arg=none -- python3 scripts/trace_phases.py allgather --bytes 1024
    ... -- python3 scripts/trace_phases.py dispatch --tokens 256      (E=64, k=8, H=4096, bf16)
    ... -- python3 scripts/trace_phases.py combine --tokens 256 [--zero-copy]

Every iteration starts after a barrier; the modules' TRACE hooks record (phase, perf_counter) on each
rank. Ranks of a virtual cluster share one host clock, so rank 0 prints, per rank, the median time of
each phase in us (all_gather) or ms (dispatch/combine) after the first rank entered the call, and the
median over iterations of the slowest rank's time in the call (what the benchmarks report).
"""
import argparse
import statistics
import sys
import time

import numpy as np
import torch

import multiwrite as mw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("op", choices=("allgather", "dispatch", "combine"))
    ap.add_argument("--bytes", type=int, default=1024, help="all_gather: bytes per rank (default 1024)")
    ap.add_argument("--tokens", type=int, default=256, help="dispatch/combine: tokens per rank (default 256)")
    ap.add_argument("--zero-copy", action="store_true",
                    help="combine: write the input into get_combine_buffer first (untimed), as the benchmark does")
    ap.add_argument("--iters", type=int, default=0, help="timed iterations (default 200 all_gather, 8 MoE)")
    ap.add_argument("--barrier", choices=("transport", "mpi"), default="transport",
                    help="barrier before each iteration: the group's transport (default) or a blocking "
                         "MPI_Barrier, as the benchmarks use under mpirun")
    ap.add_argument("--idle-ms", type=float, default=0.0,
                    help="sleep this long before each iteration's barrier (caches go cold, as after another "
                         "implementation's call in the benchmark; default 0)")
    ap.add_argument("--torch", action="store_true", help="all_gather: bfloat16 tensors, as the benchmark passes")
    args = ap.parse_args(argv)
    g = mw.init()
    prepare = lambda: None
    if args.op == "allgather":
        from multiwrite.engine import gather as module    # the small path's phases
        x = np.full(args.bytes, g.rank % 251, dtype=np.uint8)
        out = np.empty(g.size * args.bytes, dtype=np.uint8)
        if args.torch:
            x, out = torch.from_numpy(x).view(torch.bfloat16), torch.from_numpy(out).view(torch.bfloat16)
        call, scale, unit, iters = (lambda: mw.all_gather(out, x)), 1e6, "us", args.iters or 200
    else:
        import importlib
        dispatch = importlib.import_module("multiwrite.ops.moe.dispatch")
        module = importlib.import_module(f"multiwrite.ops.moe.{args.op}")
        E, k, H = 64, 8, 4096
        gen = torch.Generator().manual_seed(g.rank)
        x = torch.randn(args.tokens, H, generator=gen).to(torch.bfloat16)
        idx = torch.stack([torch.randperm(E, generator=gen)[:k] for _ in range(args.tokens)])
        w = torch.rand(args.tokens, k, generator=gen)
        if args.op == "dispatch":
            call = lambda: dispatch.dispatch(x, idx, w, E)
        else:
            recv_x, _, _, _, handle = dispatch.dispatch(x, idx, w, E)
            if args.zero_copy:
                # the benchmark's default: expert outputs written (untimed) into get_combine_buffer
                y = [None]

                def prepare():
                    y[0] = module.get_combine_buffer(handle)
                    y[0].copy_(recv_x)
                call = lambda: module.combine(y[0], handle)
            else:
                call = lambda: module.combine(recv_x, handle)
        scale, unit, iters = 1e3, "ms", args.iters or 8
    for _ in range(3 if args.op != "allgather" else 20):
        prepare()
        call()
    barrier = g.transport.barrier
    if args.barrier == "mpi":
        from mpi4py import MPI
        barrier = MPI.COMM_WORLD.Barrier
    records = []
    for _ in range(iters):
        prepare()
        if args.idle_ms:
            time.sleep(args.idle_ms / 1e3)
        barrier()
        module.TRACE = []
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        records.append([("call", t0)] + module.TRACE + [("return", t1)])
        module.TRACE = None
    every = g.transport.allgather_obj(records)
    if g.rank == 0:
        print(f"{args.op}: median {unit} after the first rank entered the call (phase names: the TRACE "
              f"labels in multiwrite/{module.__name__.split('.')[-1]}.py)")
        for r in range(g.size):
            phases = {}
            for it in range(iters):
                start = min(every[q][it][0][1] for q in range(g.size))
                seen = {}
                for label, t in every[r][it]:
                    seen[label] = seen.get(label, 0) + 1
                    name = label if seen[label] == 1 else f"{label}{seen[label]}"
                    phases.setdefault(name, []).append(scale * (t - start))
            print(f"rank {r}: " + "  ".join(f"{n} {statistics.median(v):.1f}" for n, v in phases.items()))
        slowest = [max(every[q][it][-1][1] - every[q][it][0][1] for q in range(g.size)) for it in range(iters)]
        print(f"median over iterations of the slowest rank's time in the call: {scale * statistics.median(slowest):.1f} {unit}")
    mw.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
