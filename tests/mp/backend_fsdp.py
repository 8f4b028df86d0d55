"""FSDP2 (fully_shard) through the "multiwrite" backend vs the same training through Gloo, in one run.

A small MLP is sharded with fully_shard (per layer + root) on a 1-D DeviceMesh over the multiwrite
world group, trained for STEPS steps with Adam, then the same from the same seed on a mesh over a
Gloo group. FSDP2's parameter all-gathers (all_gather_into_tensor) run on MultiWrite, its gradient
reduce-scatters are delegated to Gloo. Per-step losses must match within 1e-5 (they come out bitwise
equal) and the final full parameters too. Prints "max |loss diff| = ..." and "FSDP OK".
"""
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from backend_common import Timer, finish, group_of, init, log

STEPS = 20


def make_model():
    torch.manual_seed(4321)
    return torch.nn.Sequential(torch.nn.Linear(12, 48), torch.nn.GELU(), torch.nn.Linear(48, 48),
                               torch.nn.GELU(), torch.nn.Linear(48, 3))


def batch(rank, step):
    g = torch.Generator().manual_seed(20_000 + 31 * step + rank)
    x = torch.randn(6, 12, generator=g)
    return x, torch.cos(x[:, :3]) + 0.05 * torch.randn(6, 3, generator=g)


def train(group):
    mesh = DeviceMesh.from_group(group, "cpu")
    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(STEPS):
        x, y = batch(dist.get_rank(), step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    full = [p.full_tensor().detach().clone() for p in model.parameters()]
    return losses, full


def main():
    gloo = init()
    world = dist.group.WORLD
    g = group_of()
    timer = Timer()
    g.stats.reset()
    losses_mw, params_mw = train(world)
    # small all-gathers are sent by each node's leader only: count the whole group's bytes
    all_gather_bytes = int(sum(g.transport.allgather_obj(g.stats.inter_bytes)))
    losses_gl, params_gl = train(gloo)
    loss_diff = max(abs(a - b) for a, b in zip(losses_mw, losses_gl))
    param_diff = max((a - b).abs().max().item() for a, b in zip(params_mw, params_gl))
    log(f"FSDP2 {STEPS} steps: max |loss diff| multiwrite vs gloo = {loss_diff:.3g}, "
        f"max |param diff| = {param_diff:.3g}, losses {losses_mw[0]:.6f} -> {losses_mw[-1]:.6f}, "
        f"the group's inter-node bytes on MultiWrite = {all_gather_bytes} ({timer})", all_ranks=True)
    assert all_gather_bytes > 0, "FSDP's all-gathers did not go through MultiWrite"
    assert loss_diff <= 1e-5, f"FSDP losses differ from the Gloo run by {loss_diff}"
    assert param_diff <= 1e-5, f"FSDP parameters differ from the Gloo run by {param_diff}"
    finish("FSDP")


if __name__ == "__main__":
    sys.exit(main())
