#!/usr/bin/env bash
# The floor of the virtual cluster: how close to the physical bound can plain MPI point-to-point get?
# Every rank exchanges c bytes with the rank at the same position on the other node (Isend/Irecv,
# MPI_Waitall): exactly the inter-node traffic of a MultiWrite AllGather of c bytes per rank on 2 nodes,
# without any of its work. Prints median time and time/bound for c = 1 MiB and 4 MiB.
#   bash scripts/bench_floor.sh [--nodes 2 --ranks-per-node 4 --rate 1gbit --delay 100us]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
prog=$(mktemp /tmp/mw_floor_XXXXXX.py)
trap 'rm -f "$prog"' EXIT
cat >"$prog" <<'PYEOF'
import os, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
r, P = comm.Get_rank(), comm.Get_size()
N = int(os.environ["VCLUSTER_NNODES"]); L = P // N
rate = float(os.environ["MULTIWRITE_VCLUSTER_RATE"]); lat = float(os.environ["MULTIWRITE_VCLUSTER_PATH_DELAY_US"])
for c in (1 << 20, 4 << 20):
    peer = (r + L) % P if N == 2 else r ^ L
    s, d = np.ones(c, np.uint8), np.empty(c, np.uint8)
    times = []
    for it in range(14):
        comm.Barrier()
        t0 = time.perf_counter()
        MPI.Request.Waitall([comm.Irecv(d, source=peer, tag=1), comm.Isend(s, dest=peer, tag=1)])
        times.append(time.perf_counter() - t0)
    times = comm.gather(times)
    if r == 0:
        per = sorted(max(t[i] for t in times) for i in range(2, 14))
        med = per[len(per) // 2] * 1e6
        bound = L * c * 8 / rate * 1e6 + lat
        print(f"floor: {c >> 20} MiB per rank pair, {L} streams per direction: median {med / 1e3:.1f} ms, "
              f"bound {bound / 1e3:.1f} ms, time/bound {med / bound:.2f}", flush=True)
PYEOF
NODES=2 L=4 RATE=1gbit DELAY=100us
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;; --ranks-per-node) L=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;; --delay) DELAY=$2; shift 2 ;;
    *) echo "bench_floor.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
launch/vcluster --nodes "$NODES" --ranks-per-node "$L" --rate "$RATE" --delay "$DELAY" --launcher mpirun -q \
  --timeout 300 --launcher-arg=--bind-to --launcher-arg=none --launcher-arg=--mca --launcher-arg=mpi_yield_when_idle \
  --launcher-arg=1 --launcher-arg=--mca --launcher-arg=threads_pthreads_yield_strategy --launcher-arg=nanosleep \
  -- "$PY" "$prog" 2>&1 | grep -a "floor:" | sed 's/^.*<stdout>: //'
