#!/usr/bin/env bash
# Reproduce the committed benchmark results (docs/results/, described in docs/benchmarks.md):
# a virtual cluster of 2 nodes x 4 ranks, 1 Gbit/s links with 100 us per link (200 us node to node),
# mpirun, MPI transport; every implementation interleaved on the same data, every result checked.
#
#   bash scripts/bench_results.sh            # about 6 minutes on 2 cores; needs root + iproute2
#   OUT=/tmp/res bash scripts/bench_results.sh
#   TCP_CC=inherit OUT=/tmp/res bash scripts/bench_results.sh   # the nodes keep a new namespace's TCP
#                       # congestion control instead of auto (cubic where allowed, else reno; launch/vcluster --help)
#
# Writes, for each run NAME: NAME.json (every row and iteration), NAME.png (latency vs size, bound
# dashed) and NAME.txt (the tables, the exact command, the host's load average before and after).
# The host should be otherwise idle: 8 ranks and the vcluster delay line already share 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results}
PY=${PYTHON:-python3}
TCP_CC=${TCP_CC:-auto}
mkdir -p "$OUT"

run() {   # run NAME BENCH-ARGS...
  local name=$1; shift
  local cmd=(scripts/bench_vcluster.sh --nodes 2 --ranks-per-node 4 --rate 1gbit --delay 100us --launcher mpirun
             --tcp-congestion "$TCP_CC" -- "$@" --json "$OUT/$name.json" --plot "$OUT/$name.png")
  echo "== $name: ${cmd[*]}" >&2
  local before; before=$(cut -d' ' -f1-3 /proc/loadavg)
  "${cmd[@]}" >"$OUT/$name.log" 2>&1 || { tail -n 30 "$OUT/$name.log" >&2; return 1; }
  {
    echo "# command: ${cmd[*]}"
    # getconf, not nproc: nproc reports OMP_NUM_THREADS when that is set (1 for the benchmarks)
    echo "# load average before: $before, after: $(cut -d' ' -f1-3 /proc/loadavg) ($(getconf _NPROCESSORS_ONLN) CPUs)"
    "$PY" -c "import sys; from multiwrite.bench.common import show; sys.exit(show(sys.argv[1]))" "$OUT/$name.json"
  } >"$OUT/$name.txt"
  rm -f "$OUT/$name.log"
  cat "$OUT/$name.txt"
}

# AllGather 1 KiB .. 16 MiB per rank; MoE dispatch + combine with the defaults (E=64, k=8, H=4096,
# bf16, uniform routing), T = 16 .. 1024 tokens per rank.
run vcluster_2x4_1gbit all -b 1K -e 16M -f 4 -T 16..1024 -n 10 -w 2
# The same MoE workload with skewed routing (Zipf s=1.2 over a random expert ranking), T=256.
run vcluster_2x4_1gbit_dispatch_skewed dispatch -T 256 -n 10 -w 2 --routing skewed --zipf 1.2
run vcluster_2x4_1gbit_combine_skewed combine -T 256 -n 10 -w 2 --routing skewed --zipf 1.2
