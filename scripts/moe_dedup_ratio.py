"""Measure dispatch dedup: inter-node bytes of MultiWrite vs per-rank dedup (unicast) vs per-expert copies.

    MULTIWRITE_RANKS_PER_NODE=4 mpirun -n 8 --oversubscribe python scripts/moe_dedup_ratio.py
Options: --experts 64 --topk 8 --hidden 4096 --tokens 256 (bfloat16, uniform routing).
"""
import argparse

import torch

import multiwrite as mw
from multiwrite import _core


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--topk", type=int, default=8)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--tokens", type=int, default=256)
    a = p.parse_args()
    mw.init()
    topo = mw.topology()
    t = mw.default_group().transport
    g = torch.Generator().manual_seed(topo.rank)
    x = torch.randn(a.tokens, a.hidden, generator=g).bfloat16()
    topk_idx = torch.topk(torch.rand(a.tokens, a.experts, generator=g), a.topk, dim=1).indices
    per = a.experts // topo.world_size
    remote_experts = sum(int(topo.node_of[e // per] != topo.node) for e in topk_idx.flatten().tolist())
    row = a.hidden * 2
    rec = _core.record_size(row, a.topk)
    result = {}
    for mode in ("multiwrite", "unicast"):
        buf = mw.Buffer(mode=mode)
        mw.reset_stats()
        recv = buf.dispatch(x, topk_idx, torch.rand(a.tokens, a.topk, generator=g), a.experts)
        st = mw.stats()["inter_node"]
        result[mode] = (st["bytes"], st["messages"])
    rows = t.allgather_obj((result, remote_experts))
    mw_bytes = sum(r[0]["multiwrite"][0] for r in rows)
    uni_bytes = sum(r[0]["unicast"][0] for r in rows)
    mw_msgs = sum(r[0]["multiwrite"][1] for r in rows)
    uni_msgs = sum(r[0]["unicast"][1] for r in rows)
    expert_rows = sum(r[1] for r in rows)
    if topo.rank == 0:
        mw_rows = (mw_bytes - 64 * mw_msgs) / rec
        uni_rows = (uni_bytes - 64 * uni_msgs) / rec
        print(f"{topo.world_size} ranks on {topo.num_nodes} nodes, E={a.experts}, top-{a.topk}, H={a.hidden} bf16, "
              f"T={a.tokens}/rank, uniform routing")
        print(f"rows crossing nodes: MultiWrite {mw_rows:.0f}, per-rank dedup {uni_rows:.0f}, "
              f"per-expert copies {expert_rows}")
        print(f"inter-node bytes: MultiWrite {mw_bytes / 2**20:.2f} MiB, per-rank dedup {uni_bytes / 2**20:.2f} MiB, "
              f"per-expert copies {expert_rows * row / 2**20:.2f} MiB (rows only)")
        print(f"dedup ratio: {uni_rows / mw_rows:.2f}x vs per-rank dedup, {expert_rows / mw_rows:.2f}x vs "
              f"per-expert copies")
    mw.finalize()


if __name__ == "__main__":
    main()
