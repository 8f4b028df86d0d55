"""mpi4py program for the vcluster tests: allgather (rank, hostname, netns inode); rank 0 checks."""
import json
import os
import socket
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
me = (comm.Get_rank(), socket.gethostname(), os.stat("/proc/self/ns/net").st_ino)
allv = comm.allgather(me)
# a little real traffic between the nodes too
big = comm.allreduce(bytes(1 << 16) and comm.Get_rank(), op=MPI.SUM)
if comm.Get_rank() == 0:
    size = comm.Get_size()
    hosts = sorted({h for _, h, _ in allv})
    nets = sorted({n for _, _, n in allv})
    print("RESULT " + json.dumps({"size": size, "ranks": sorted(r for r, _, _ in allv), "hosts": hosts,
                                  "netns": nets, "sum": big,
                                  "rate": os.environ.get("MULTIWRITE_VCLUSTER_RATE"),
                                  "delay_us": os.environ.get("MULTIWRITE_VCLUSTER_DELAY_US")}), flush=True)
    expect = int(os.environ.get("EXPECT_SIZE", "4"))
    nodes = int(os.environ.get("EXPECT_NODES", "2"))
    ok = size == expect and len(hosts) == nodes and len(nets) == nodes and big == size * (size - 1) // 2
    if not ok:
        print("MISMATCH", allv, file=sys.stderr, flush=True)
        sys.exit(5)
