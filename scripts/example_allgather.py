"""AllGather with multiwrite, compared with unicast mode, printing the inter-node bytes of each.

    mpirun -n 4 --oversubscribe python scripts/example_allgather.py          (as root: --allow-run-as-root)
    MULTIWRITE_RANKS_PER_NODE=2 mpirun -n 4 --oversubscribe python scripts/example_allgather.py
Works the same under torchrun (--nproc-per-node 4).
"""
import torch

import multiwrite as mw


def main():
    mw.init()
    topo = mw.topology()
    x = torch.full((1 << 16,), float(topo.rank))          # 256 KiB per rank
    out = torch.empty(topo.world_size * x.numel())
    for mode in ("multiwrite", "unicast"):
        mw.reset_stats()
        mw.all_gather(out, x, mode=mode)
        assert all(bool((out.view(topo.world_size, -1)[r] == r).all()) for r in range(topo.world_size))
        sent = mw.default_group().transport.allgather_obj(mw.stats()["inter_node"]["bytes"])
        if topo.rank == 0:
            print(f"{mode:>10}: {topo.world_size} ranks on {topo.num_nodes} nodes, "
                  f"{sum(sent) / 2**20:.2f} MiB crossed node links per AllGather", flush=True)
    if topo.rank == 0:
        print("all_gather results verified", flush=True)
    mw.finalize()


if __name__ == "__main__":
    main()
