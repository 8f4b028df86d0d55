"""torchrun program for the vcluster tests: gloo all_gather_object of (rank, hostname, netns inode, env)
and a tensor all_gather; rank 0 prints one RESULT line (JSON) and exits 5 on a mismatch."""
import json
import os
import socket
import sys

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
me = (rank, socket.gethostname(), os.stat("/proc/self/ns/net").st_ino,
      os.environ.get("MULTIWRITE_VCLUSTER_RATE"), os.environ.get("MULTIWRITE_VCLUSTER_DELAY_US"),
      os.environ.get("VCLUSTER_NODE_RANK"))
allv = [None] * world
dist.all_gather_object(allv, me)
t = torch.full((4,), float(rank))
out = [torch.empty(4) for _ in range(world)]
dist.all_gather(out, t)
tensors_ok = all(bool((o == r).all()) for r, o in enumerate(out))
if rank == 0:
    hosts = sorted({v[1] for v in allv})
    nets = sorted({v[2] for v in allv})
    print("RESULT " + json.dumps({"size": world, "ranks": sorted(v[0] for v in allv), "hosts": hosts,
                                  "netns": nets, "tensors_ok": tensors_ok,
                                  "rates": sorted({v[3] for v in allv}),
                                  "delays_us": sorted({v[4] for v in allv}),
                                  "node_ranks": [v[5] for v in sorted(allv)],
                                  "host_of_rank": [v[1] for v in sorted(allv)]}), flush=True)
dist.barrier()
dist.destroy_process_group()
if rank == 0:
    expect = int(os.environ.get("EXPECT_SIZE", "4"))
    nodes = int(os.environ.get("EXPECT_NODES", "2"))
    if not (world == expect and len(hosts) == nodes and len(nets) == nodes and tensors_ok):
        print("MISMATCH", allv, file=sys.stderr, flush=True)
        sys.exit(5)
