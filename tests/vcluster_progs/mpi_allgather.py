"""mpi4py program for the vcluster tests: allgather (rank, hostname, netns inode, env); rank 0 checks
and prints one RESULT line (JSON).  Exit 5 when the world does not have EXPECT_SIZE ranks on
EXPECT_NODES distinct hostnames and network namespaces (defaults 4 and 2)."""
import json
import os
import socket
import sys

from mpi4py import MPI

comm = MPI.COMM_WORLD
me = (comm.Get_rank(), socket.gethostname(), os.stat("/proc/self/ns/net").st_ino,
      os.environ.get("MULTIWRITE_VCLUSTER_RATE"), os.environ.get("MULTIWRITE_VCLUSTER_DELAY_US"),
      os.environ.get("VCLUSTER_NODE_RANK"))
allv = comm.allgather(me)
# some real traffic between the nodes too: 64 KiB from every rank, and a reduction
blobs = comm.allgather(bytes([comm.Get_rank()]) * 65536)
blobs_ok = all(b == bytes([r]) * 65536 for r, b in enumerate(blobs))
big = comm.allreduce(comm.Get_rank(), op=MPI.SUM)
if comm.Get_rank() == 0:
    size = comm.Get_size()
    hosts = sorted({v[1] for v in allv})
    nets = sorted({v[2] for v in allv})
    print("RESULT " + json.dumps({"size": size, "ranks": sorted(v[0] for v in allv), "hosts": hosts,
                                  "netns": nets, "sum": big, "blobs_ok": blobs_ok,
                                  "rates": sorted({v[3] for v in allv}),
                                  "delays_us": sorted({v[4] for v in allv}),
                                  "node_ranks": [v[5] for v in sorted(allv)],
                                  "host_of_rank": [v[1] for v in sorted(allv)]}), flush=True)
    expect = int(os.environ.get("EXPECT_SIZE", "4"))
    nodes = int(os.environ.get("EXPECT_NODES", "2"))
    ok = size == expect and len(hosts) == nodes and len(nets) == nodes and blobs_ok and big == size * (size - 1) // 2
    if not ok:
        print("MISMATCH", allv, file=sys.stderr, flush=True)
        sys.exit(5)
