"""torchrun program for the vcluster tests: gloo all_gather_object of (rank, hostname, netns inode)."""
import json
import os
import socket
import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
me = (rank, socket.gethostname(), os.stat("/proc/self/ns/net").st_ino)
allv = [None] * world
dist.all_gather_object(allv, me)
t = torch.full((4,), float(rank))
out = [torch.empty(4) for _ in range(world)]
dist.all_gather(out, t)
tensors_ok = all(bool((o == r).all()) for r, o in enumerate(out))
if rank == 0:
    hosts = sorted({h for _, h, _ in allv})
    nets = sorted({n for _, _, n in allv})
    print("RESULT " + json.dumps({"size": world, "ranks": sorted(r for r, _, _ in allv), "hosts": hosts,
                                  "netns": nets, "tensors_ok": tensors_ok,
                                  "rate": os.environ.get("MULTIWRITE_VCLUSTER_RATE"),
                                  "delay_us": os.environ.get("MULTIWRITE_VCLUSTER_DELAY_US")}), flush=True)
dist.barrier()
dist.destroy_process_group()
if rank == 0:
    expect = int(os.environ.get("EXPECT_SIZE", "4"))
    nodes = int(os.environ.get("EXPECT_NODES", "2"))
    if not (world == expect and len(hosts) == nodes and len(nets) == nodes and tensors_ok):
        print("MISMATCH", allv, file=sys.stderr, flush=True)
        sys.exit(5)
