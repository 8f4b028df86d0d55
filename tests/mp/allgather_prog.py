"""Multi-process AllGather check (run by tests/test_allgather_mp.py under mpirun and torchrun).

Checks, in both modes: results equal the concatenation of every rank's input for several dtypes and
sizes; inter-node bytes per node from mw.stats() equal the analytical count exactly.
"""
import sys

import numpy as np
import torch

import multiwrite as mw

SIZES = [0, 1, 7, 1237, 65536]
BIG = 16 * 1024 * 1024 // 4        # 16 MiB of float32 per rank


def rank_input(rank, n, dtype):
    g = torch.Generator().manual_seed(1000 + rank)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(n, generator=g) * 100).to(dtype)
    return torch.randint(-1000 if dtype != torch.uint8 else 0, 255, (n,), generator=g).to(dtype)


def check_allgather(n, dtype, mode):
    topo = mw.topology()
    x = rank_input(topo.rank, n, dtype)
    out = torch.empty(topo.world_size * n, dtype=dtype)
    mw.reset_stats()
    mw.all_gather(out, x, mode=mode)
    expected = torch.cat([rank_input(r, n, dtype) for r in range(topo.world_size)])
    assert torch.equal(out.view(torch.uint8) if dtype == torch.bfloat16 else out,
                       expected.view(torch.uint8) if dtype == torch.bfloat16 else expected), \
        f"rank {topo.rank}: all_gather wrong for n={n} {dtype} {mode}"
    return x.numel() * x.element_size()


def _small_aggregated(topo, c):
    from multiwrite.engine import gather as ag
    return ag.node_aggregated(topo, c)


def check_bytes(c, mode):
    """Sum this node's inter-node bytes and compare with the cost model of docs/design.md section 4 (+64 B header/packet)."""
    topo = mw.topology()
    g = mw.default_group()
    st = mw.stats()
    per_rank = g.transport.allgather_obj((topo.node, st["inter_node"]["bytes"], st["inter_node"]["messages"]))
    P, N = topo.world_size, topo.num_nodes
    for node in range(N):
        L = len(topo.node_ranks[node])
        sent = sum(b for n, b, _ in per_rank if n == node)
        msgs = sum(m for n, _, m in per_rank if n == node)
        packets = L * (N - 1) if mode == "multiwrite" else L * (P - L)
        expected = packets * (c + 64)
        if mode == "multiwrite" and _small_aggregated(topo, c):
            # the node leader sends the node's L chunks as one packet per other node
            packets, expected = N - 1, (N - 1) * (L * c + 64)
        assert sent == expected, \
            f"node {node} sent {sent} inter-node bytes in {mode} mode, expected {expected} ({packets} packets)"
        assert msgs == packets, f"node {node} sent {msgs} packets, expected {packets}"
    return per_rank


def main():
    mw.init()
    topo = mw.topology()
    modes = ["multiwrite", "unicast"]
    for mode in modes:
        for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.bool):
            for n in SIZES:
                c = check_allgather(n, dtype, mode)
                check_bytes(c, mode)
        c = check_allgather(BIG, torch.float32, mode)
        check_bytes(c, mode)
    # 2-D outputs, non-contiguous output
    x = torch.full((3, 5), float(topo.rank))
    out = torch.empty(topo.world_size, 3, 5)
    mw.all_gather(out, x)
    assert all(torch.all(out[r] == r) for r in range(topo.world_size))
    big = torch.empty(5, topo.world_size * 3)
    out_nc = big.t()                       # [P*3, 5], not contiguous
    mw.all_gather(out_nc, x)
    assert torch.equal(out_nc, out.reshape(-1, 5)), "non-contiguous output wrong"
    # numpy arrays work too
    a = np.arange(10, dtype=np.int32) + 100 * topo.rank
    o = np.empty(10 * topo.world_size, dtype=np.int32)
    mw.all_gather(o, a)
    assert (o.reshape(topo.world_size, 10) == np.arange(10) + 100 * np.arange(topo.world_size)[:, None]).all()
    if topo.rank == 0:
        print(f"allgather OK: {topo}", flush=True)
    mw.finalize()


if __name__ == "__main__":
    sys.exit(main())
