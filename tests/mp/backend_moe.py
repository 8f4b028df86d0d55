"""Expert-parallel MoE training through the "multiwrite" backend vs a single-process reference.

Model (per token): h = tanh(pre(x)); gate -> softmax -> top-k (weights, expert ids);
y = sum_j w_j * expert_{e_j}(h) with expert(h) = W2 gelu(W1 h); out = head(y); loss = MSE(out, target),
averaged over the tokens of all ranks. Experts are split contiguously over the ranks (E/P each).

Distributed: init_process_group("multiwrite"); h is sent to the ranks of its experts with
mw.moe.dispatch (autograd-aware), each rank runs its local experts, mw.moe.combine brings the weighted
sums back; the gradients of the replicated (non-expert) weights are summed with dist.all_reduce
through the backend; the expert weights are local (their gradients already arrive through dispatch /
combine backward). Reference: one process, all experts, all ranks' tokens, the same initial weights and
the same SGD. The per-step global loss must match within 1e-4 for STEPS steps (and the final weights
closely). Prints "max |loss diff| = ..." and "MoE OK".
"""
import sys

import torch
import torch.distributed as dist

from backend_common import Timer, finish, group_of, init, log, mw

STEPS = 25
H, E, K, T, LR = 16, 8, 2, 24, 4.0


def initial_weights():
    g = torch.Generator().manual_seed(2024)
    w = {
        "pre": torch.randn(H, H, generator=g) / H ** 0.5,
        "gate": torch.randn(E, H, generator=g) / H ** 0.5,
        "w1": torch.randn(E, 2 * H, H, generator=g) / H ** 0.5,
        "w2": torch.randn(E, H, 2 * H, generator=g) / (2 * H) ** 0.5,
        "head": torch.randn(H, H, generator=g) / H ** 0.5,
    }
    return w


def tokens(rank, step):
    """Rank ``rank``'s batch of step ``step``: 4 fixed batches per rank, cycled; a learnable target."""
    g = torch.Generator().manual_seed(30_000 + 101 * (step % 4) + rank)
    x = torch.randn(T, H, generator=g)
    a = torch.Generator().manual_seed(7)
    target = torch.tanh(x @ torch.randn(H, H, generator=a) / H ** 0.5)
    return x, target


def route(params, x):
    h = torch.tanh(x @ params["pre"].T)
    probs = torch.softmax(h @ params["gate"].T, dim=-1)
    w, idx = torch.topk(probs, K, dim=-1)
    return h, w, idx


def expert(w1, w2, h):
    return torch.nn.functional.gelu(h @ w1.T) @ w2.T


def reference_step(params, xs, targets, P):
    """All experts in one process, all P ranks' tokens."""
    x, target = torch.cat(xs), torch.cat(targets)
    h, w, idx = route(params, x)
    y = torch.zeros_like(h)
    for j in range(K):
        for e in range(E):
            mask = (idx[:, j] == e).unsqueeze(1)
            y = y + torch.where(mask, w[:, j:j + 1] * expert(params["w1"][e], params["w2"][e], h),
                                torch.zeros_like(h))
    out = y @ params["head"].T
    loss = ((out - target) ** 2).sum() / (P * T * H)
    return loss


def distributed_step(params, x, target, P, rank, g):
    per = E // P
    h, w, idx = route(params, x)
    recv_h, recv_idx, recv_w, counts, handle = mw.moe.dispatch(h, idx, w, E, group=g)
    assert sum(counts) == int((recv_idx >= 0).sum())
    out_rows = torch.zeros_like(recv_h)
    for j in range(K):
        for le in range(per):
            mask = (recv_idx[:, j] == le).unsqueeze(1)
            out_rows = out_rows + torch.where(
                mask, recv_w[:, j:j + 1] * expert(params["w1"][le], params["w2"][le], recv_h),
                torch.zeros_like(recv_h))
    y = mw.moe.combine(out_rows, handle)
    out = y @ params["head"].T
    return ((out - target) ** 2).sum() / (P * T * H)


def sgd(params):
    with torch.no_grad():
        for p in params.values():
            p -= LR * p.grad
            p.grad = None


def main():
    init()
    P, rank = dist.get_world_size(), dist.get_rank()
    assert E % P == 0
    g = group_of()                                      # the world group's multiwrite Group
    per = E // P
    timer = Timer()
    w0 = initial_weights()
    ref = {k: v.clone().requires_grad_() for k, v in w0.items()}
    mine = {k: v.clone() for k, v in w0.items()}
    mine["w1"], mine["w2"] = mine["w1"][rank * per:(rank + 1) * per].clone(), mine["w2"][rank * per:(rank + 1) * per].clone()
    mine = {k: v.requires_grad_() for k, v in mine.items()}
    shared = ["pre", "gate", "head"]
    losses, ref_losses = [], []
    g.stats.reset()
    for step in range(STEPS):
        x, target = tokens(rank, step)
        loss = distributed_step(mine, x, target, P, rank, g)
        loss.backward()
        grads = torch.cat([mine[k].grad.reshape(-1) for k in shared])
        dist.all_reduce(grads)                          # non-expert gradients, through the backend
        off = 0
        for k in shared:
            n = mine[k].numel()
            mine[k].grad.copy_(grads[off:off + n].view_as(mine[k]))
            off += n
        total = loss.detach().clone()
        dist.all_reduce(total)
        sgd(mine)
        losses.append(total.item())

        xs, targets = zip(*(tokens(r, step) for r in range(P)))
        rloss = reference_step(ref, xs, targets, P)
        rloss.backward()
        sgd(ref)
        ref_losses.append(rloss.item())
    loss_diff = max(abs(a - b) for a, b in zip(losses, ref_losses))
    w_diff = max((mine[k] - ref[k]).abs().max().item() for k in shared)
    e_diff = max((mine[k] - ref[k][rank * per:(rank + 1) * per]).abs().max().item() for k in ("w1", "w2"))
    log(f"MoE {STEPS} steps (P={P}, E={E}, k={K}, T={T}/rank): loss {losses[0]:.6f} -> {losses[-1]:.6f}, "
        f"max |loss diff| vs single-process reference = {loss_diff:.3g}, max |weight diff| shared "
        f"{w_diff:.3g} experts {e_diff:.3g}, inter-node bytes of dispatch/combine from rank 0 = "
        f"{g.stats.inter_bytes} ({timer})")
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), "the MoE model did not learn"
    assert loss_diff <= 1e-4, f"MoE loss curve differs from the reference by {loss_diff}"
    assert w_diff <= 1e-4 and e_diff <= 1e-4, (w_diff, e_diff)
    finish("MoE")


if __name__ == "__main__":
    sys.exit(main())
