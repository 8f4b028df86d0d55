"""DDP through the "multiwrite" backend vs the same training through Gloo, in one run.

A small MLP is trained for STEPS steps with DistributedDataParallel twice from the same seed: once on
the multiwrite world group, once on a Gloo group over the same ranks. Each rank starts from different
random weights, so DDP's initial broadcast (on MultiWrite) matters; small buckets give several
all-reduces per step. The gradient all-reduce runs on multiwrite's reductions (node first,
multiwrite/ops/reduce.py), which sum the float32 gradients in another order than Gloo's ring, so the
two runs may differ by rounding: the final parameters must agree within 1e-6 (measured: ~3e-8 after
25 steps) and the losses within 1e-6; the replicas of the multiwrite run must be bitwise equal to each
other (every rank gets the same all-reduce result, bit for bit).
Prints "max |param diff| = ..." and "DDP OK".
"""
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from backend_common import Timer, bitwise_equal, finish, group_of, init, log

STEPS = 25
TOLERANCE = 1e-6       # rounding: the all-reduce sums in another order than Gloo (module doc)


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                               torch.nn.Tanh(), torch.nn.Linear(64, 4))


def batch(rank, step):
    g = torch.Generator().manual_seed(10_000 + 97 * step + rank)
    x = torch.randn(8, 16, generator=g)
    return x, torch.sin(x[:, :4] * 2) + 0.1 * torch.randn(8, 4, generator=g)


def train(group):
    rank = dist.get_rank()
    model = DDP(make_model(1234 + rank), process_group=group, bucket_cap_mb=0.005)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(STEPS):
        x, y = batch(rank, step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return [p.detach().clone() for p in model.module.parameters()], losses


def main():
    gloo = init()
    g = group_of()
    timer = Timer()
    g.stats.reset()
    params_mw, losses_mw = train(None)                      # default group: "multiwrite"
    inter = g.stats.inter_bytes
    params_gl, losses_gl = train(gloo)
    diff = max((a.double() - b.double()).abs().max().item() for a, b in zip(params_mw, params_gl))
    bitwise = all(bitwise_equal(a, b) for a, b in zip(params_mw, params_gl))
    loss_diff = max(abs(a - b) for a, b in zip(losses_mw, losses_gl))
    # the replicas agree with each other too
    flat = torch.cat([p.reshape(-1) for p in params_mw])
    everyone = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, flat)
    assert all(bitwise_equal(e, flat) for e in everyone), "DDP replicas diverged"
    log(f"DDP {STEPS} steps: max |param diff| multiwrite vs gloo = {diff:.3g} (bitwise equal: {bitwise}), "
        f"max |loss diff| = {loss_diff:.3g}, final loss {losses_mw[-1]:.6f}, "
        f"multiwrite inter-node bytes from rank 0 (DDP broadcast) = {inter} ({timer})")
    assert diff <= TOLERANCE, f"DDP parameters differ from the Gloo run: max |diff| {diff}"
    assert loss_diff <= TOLERANCE, f"DDP losses differ from the Gloo run: max |diff| {loss_diff}"
    finish("DDP")


if __name__ == "__main__":
    sys.exit(main())
