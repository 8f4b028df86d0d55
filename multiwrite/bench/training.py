"""Training step time with the "multiwrite" torch.distributed backend vs Gloo, in the same run.

    torchrun --nproc-per-node 4 -m multiwrite.bench.training
    mpirun -n 4 python -m multiwrite.bench.training --modes ddp
    MW_MODULE=multiwrite.bench.training scripts/bench_vcluster.sh -- --steps 20   # 2 x 4 virtual cluster

The world group uses the "multiwrite" backend; a second group over the same ranks uses "gloo". For each
mode (DDP, FSDP2 ``fully_shard``) the same model (an MLP, ``--hidden``/``--layers``; the default has
12.6 M parameters) is built twice from one seed, once per group, and the two are trained step by step
in alternation (multiwrite, gloo, multiwrite, ...), so both see the same host load. A step is forward,
backward (DDP: gradient all-reduce; FSDP2: parameter all-gathers and gradient reduce-scatters) and an
AdamW update; its time is the slowest rank's. Rank 0 prints the median step time per backend, the
ratio multiwrite / gloo, and after training the largest parameter difference between the two runs
(DDP's must be <= 1e-6: the reductions differ only in summation order).

Exit status 1 if the parameters differ by more than ``--tolerance``.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist

import multiwrite as mw  # noqa: F401  (registers the "multiwrite" backend)
from .options import parse_choices


def make_model(width_in, hidden, layers):
    torch.manual_seed(1234)
    mods = [torch.nn.Linear(width_in, hidden), torch.nn.GELU()]
    for _ in range(layers - 2):
        mods += [torch.nn.Linear(hidden, hidden), torch.nn.GELU()]
    mods.append(torch.nn.Linear(hidden, width_in))
    return torch.nn.Sequential(*mods)


def wrap(mode, model, group):
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, process_group=group)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard
    mesh = DeviceMesh.from_group(group, "cpu")
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def full_params(mode, model):
    if mode == "ddp":
        return [p.detach().clone() for p in model.module.parameters()]
    return [p.full_tensor().detach().clone() for p in model.parameters()]


class Trainer:
    def __init__(self, mode, group, args):
        self.mode = mode
        self.model = wrap(mode, make_model(args.width, args.hidden, args.layers), group)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        self.times = []
        self.phases = {"forward": [], "backward": [], "optimizer": []}

    def step(self, x, y, sync_group):
        dist.barrier(group=sync_group)           # start together: the step time is the collective one
        t0 = time.perf_counter()
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        loss.backward()                          # DDP: includes the gradient all-reduce
        t2 = time.perf_counter()
        self.opt.step()
        t3 = time.perf_counter()
        self.times.append(t3 - t0)
        for name, dt in zip(self.phases, (t1 - t0, t2 - t1, t3 - t2)):
            self.phases[name].append(dt)
        return loss.item()


def batch(rank, step, args):
    g = torch.Generator().manual_seed(100_000 * step + rank)
    x = torch.randn(args.batch, args.width, generator=g)
    return x, torch.tanh(x)


def slowest(times, group):
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t.tolist()


def run_mode(mode, gloo, args, rank):
    world = dist.group.WORLD
    trainers = {"multiwrite": Trainer(mode, world, args), "gloo": Trainer(mode, gloo, args)}
    losses = {name: [] for name in trainers}
    total = args.warmup + args.steps
    for step in range(total):
        x, y = batch(rank, step, args)
        order = ("multiwrite", "gloo") if step % 2 == 0 else ("gloo", "multiwrite")
        for name in order:
            losses[name].append(trainers[name].step(x, y, gloo))
        if rank == 0 and args.progress and (step + 1) % max(1, total // 10) == 0:
            print(f"  {mode}: step {step + 1}/{total}", flush=True)
    result = {"mode": mode}
    for name, tr in trainers.items():
        times = slowest(tr.times[args.warmup:], gloo)
        result[name] = {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
                        "max_ms": 1e3 * max(times), "times_ms": [round(1e3 * t, 2) for t in times],
                        # this rank's (rank 0's) phases, medians: where the step's time goes
                        "phases_ms": {k: 1e3 * statistics.median(v[args.warmup:]) for k, v in tr.phases.items()}}
    result["ratio"] = result["multiwrite"]["median_ms"] / result["gloo"]["median_ms"]
    pm, pg = (full_params(mode, trainers[n].model) for n in ("multiwrite", "gloo"))
    result["max_param_diff"] = max((a - b).abs().max().item() for a, b in zip(pm, pg))
    result["max_loss_diff"] = max(abs(a - b) for a, b in zip(losses["multiwrite"], losses["gloo"]))
    result["final_loss"] = losses["multiwrite"][-1]
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="ddp,fsdp", help="comma-separated: ddp, fsdp (default both)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per backend and mode (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--width", type=int, default=1024, help="input/output width (default 1024)")
    ap.add_argument("--hidden", type=int, default=2048, help="hidden width (default 2048)")
    ap.add_argument("--layers", type=int, default=4, help="Linear layers, >= 2 (default 4)")
    ap.add_argument("--batch", type=int, default=8, help="samples per rank and step (default 8)")
    ap.add_argument("--tolerance", type=float, default=1e-6,
                    help="largest allowed parameter difference multiwrite vs gloo after training (default 1e-6)")
    ap.add_argument("--json", help="write the results here (rank 0)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    try:
        modes = parse_choices("--modes", args.modes, ("ddp", "fsdp"))
    except ValueError as e:
        ap.error(str(e))
    if args.layers < 2:
        ap.error("--layers must be >= 2")

    dist.init_process_group("multiwrite")
    rank, world = dist.get_rank(), dist.get_world_size()
    gloo = dist.new_group(backend="gloo")
    torch.set_num_threads(1)
    params = sum(p.numel() for p in make_model(args.width, args.hidden, args.layers).parameters())
    topo = mw.topology()
    launcher = "mpirun" if "OMPI_COMM_WORLD_SIZE" in os.environ else "torchrun"
    header = (f"training bench: {world} ranks on {topo.num_nodes} node(s) ({launcher}, transport "
              f"{mw.default_group().transport.name}), MLP {args.layers} layers "
              f"{args.width}-{args.hidden}, {params / 1e6:.1f} M parameters ({4 * params / 2**20:.1f} MiB of "
              f"float32 gradients), batch {args.batch}/rank, {args.steps} timed steps after {args.warmup}")
    if rank == 0:
        print(header, flush=True)
    results = [run_mode(m, gloo, args, rank) for m in modes]
    status = 0
    if rank == 0:
        print(f"{'mode':6s} {'multiwrite ms':>14s} {'gloo ms':>10s} {'ratio':>7s} {'max|dparam|':>12s} "
              f"{'max|dloss|':>11s}")
        for r in results:
            print(f"{r['mode']:6s} {r['multiwrite']['median_ms']:14.1f} {r['gloo']['median_ms']:10.1f} "
                  f"{r['ratio']:7.3f} {r['max_param_diff']:12.3g} {r['max_loss_diff']:11.3g}")
            for name in ("multiwrite", "gloo"):
                ph = r[name]["phases_ms"]
                print(f"  {name:10s} rank 0 phases (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items()))
            if r["max_param_diff"] > args.tolerance:
                print(f"FAIL: {r['mode']}: parameters differ from the Gloo run by {r['max_param_diff']:.3g} "
                      f"> --tolerance {args.tolerance:g}", flush=True)
                status = 1
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"header": header, "argv": sys.argv, "params": params, "world": world,
                           "nodes": topo.num_nodes, "launcher": launcher, "results": results}, f, indent=1)
        print("RESULT: " + ("PASS" if status == 0 else "FAIL"), flush=True)
    status_t = torch.tensor([status])
    dist.all_reduce(status_t, op=dist.ReduceOp.MAX, group=gloo)
    dist.destroy_process_group()
    return int(status_t.item())


if __name__ == "__main__":
    sys.exit(main())
