"""Expert-parallel MoE layer on multiwrite: gate -> top-k -> dispatch -> local experts -> combine.

Checks the forward output and every gradient (input, gate, experts) against a single-process
reference that holds all experts and all ranks' tokens, computed with the same weights.

    MULTIWRITE_RANKS_PER_NODE=2 mpirun -n 4 --oversubscribe python scripts/moe_layer_example.py
    MULTIWRITE_RANKS_PER_NODE=2 torchrun --nproc-per-node 4 scripts/moe_layer_example.py
Options: --experts E --topk K --hidden H --tokens T --dtype float32|bfloat16 --mode multiwrite|unicast
"""
import argparse

import torch

import multiwrite as mw


class ExpertParallelMoE(torch.nn.Module):
    """Gate replicated on every rank; experts split contiguously (expert e on rank e // (E/P))."""

    def __init__(self, hidden, num_experts, topk, rank, world_size, seed=0, mode=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.num_experts, self.topk, self.mode = num_experts, topk, mode
        self.per_rank = num_experts // world_size
        self.first = rank * self.per_rank
        self.gate = torch.nn.Parameter(torch.randn(hidden, num_experts, generator=g) / hidden ** 0.5)
        all_experts = torch.randn(num_experts, hidden, hidden, generator=g) / hidden ** 0.5
        self.experts = torch.nn.Parameter(all_experts[self.first:self.first + self.per_rank].clone())

    def forward(self, x):
        scores = torch.softmax(x.float() @ self.gate, dim=-1)
        topk_w, topk_idx = torch.topk(scores, self.topk, dim=-1)
        recv_x, recv_idx, recv_w, _, handle = mw.moe.dispatch(x, topk_idx, topk_w, self.num_experts,
                                                              mode=self.mode)
        y = torch.zeros(recv_x.shape, dtype=torch.float32)
        for j in range(self.per_rank):
            slot = recv_idx == j                                  # [R, k]
            rows = slot.any(dim=1)
            if rows.any():
                w = (recv_w * slot).sum(dim=1, keepdim=True)[rows]
                y = y.index_add(0, rows.nonzero().squeeze(1),
                                w * torch.tanh(recv_x[rows].float() @ self.experts[j]))
        return mw.moe.combine(y.to(x.dtype), handle)


def reference(x_all, gate, experts, topk):
    """Every token through its top-k experts in one process."""
    scores = torch.softmax(x_all.float() @ gate, dim=-1)
    topk_w, topk_idx = torch.topk(scores, topk, dim=-1)
    out = torch.zeros(x_all.shape, dtype=torch.float32)
    for slot in range(topk):
        e = topk_idx[:, slot]
        out = out + topk_w[:, slot:slot + 1] * torch.tanh(torch.einsum("th,thk->tk", x_all.float(), experts[e]))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--mode", default=None, choices=["multiwrite", "unicast"])
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    mw.init()
    topo = mw.topology()
    P, r = topo.world_size, topo.rank
    transport = mw.default_group().transport
    layer = ExpertParallelMoE(args.hidden, args.experts, args.topk, r, P, mode=args.mode)
    x = torch.randn(args.tokens + r, args.hidden, generator=torch.Generator().manual_seed(100 + r)).to(dtype)
    x.requires_grad_(True)
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(200 + r))
    out = layer(x)
    (out.float() * target).sum().backward()

    # Reference: every rank recomputes the whole model on all ranks' tokens in one process.
    xs = transport.allgather_obj(x.detach())
    targets = transport.allgather_obj(target)
    g = torch.Generator().manual_seed(0)
    gate = torch.randn(args.hidden, args.experts, generator=g) / args.hidden ** 0.5
    experts = torch.randn(args.experts, args.hidden, args.hidden, generator=g) / args.hidden ** 0.5
    x_all = torch.cat(xs).detach().float().requires_grad_(True)
    gate.requires_grad_(True)
    experts.requires_grad_(True)
    ref = reference(x_all, gate, experts, args.topk)
    (ref * torch.cat(targets)).sum().backward()
    start = sum(t.shape[0] for t in xs[:r])
    rows = slice(start, start + x.shape[0])
    gate_grad = sum(transport.allgather_obj(layer.gate.grad))     # the gate is replicated: sum over ranks
    diffs = {
        "output": (out.float() - ref[rows]).abs().max().item(),
        "grad_x": (x.grad.float() - x_all.grad[rows]).abs().max().item(),
        "grad_gate": (gate_grad - gate.grad).abs().max().item(),
        "grad_experts": (layer.experts.grad - experts.grad[layer.first:layer.first + layer.per_rank]).abs().max().item(),
    }
    worst = {k: max(v) for k, v in zip(diffs, zip(*transport.allgather_obj(list(diffs.values()))))}
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    if r == 0:
        print("MoE layer vs single-process reference, max abs difference over ranks: "
              + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()), flush=True)
    assert all(v <= tol for v in worst.values()), worst
    if r == 0:
        print(f"moe layer OK (tolerance {tol:g})", flush=True)
    mw.finalize()


if __name__ == "__main__":
    main()
