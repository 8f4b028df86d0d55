#!/usr/bin/env bash
# Quickstart: from a fresh checkout to a verified comparison table.
#
#   bash scripts/demo.sh
#
# 1. bash scripts/setup.sh: PyTorch 2.13.0 (CPU), Open MPI + mpi4py, the package with its C++ core,
#    iproute2 when root (idempotent; the first run builds the core).
# 2. A short benchmark of AllGather, MoE dispatch and MoE combine (a few sizes, 10 timed iterations
#    each, every result checked) comparing MPI's and Gloo's own collectives with multiwrite unicast and
#    MultiWrite, interleaved on the same data:
#      * as root with iproute2: on a virtual cluster of 2 nodes x 4 ranks (network namespaces, links
#        shaped to 1 Gbit/s and 100 us per link), launched with mpirun;
#      * otherwise: 8 ranks on this host, nodes emulated with MULTIWRITE_RANKS_PER_NODE=4 (no shaped
#        links, so no physical bound column).
# 3. The comparison table (also in $OUT/demo.json, the plot in $OUT/demo.png, the raw log in $OUT/demo.log).
#
# Environment: OUT (default /tmp/multiwrite-demo), PYTHON (default python3), DEMO_MODE=vcluster|local
# to force one of the two setups. Takes about 1-3 minutes after setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/multiwrite-demo}
mkdir -p "$OUT"

echo "== 1/3 setup (scripts/setup.sh)"
bash scripts/setup.sh

export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export MULTIWRITE_TIMEOUT=${MULTIWRITE_TIMEOUT:-120}
BENCH=(all -b 16K -e 1M -f 8 -T 64,256 -n 10 -w 2 --json "$OUT/demo.json" --plot "$OUT/demo.png")

have_vcluster() {
  [ "$(id -u)" = 0 ] || return 1
  for t in ip tc unshare mpirun; do command -v "$t" >/dev/null 2>&1 || return 1; done
  return 0
}
MODE=${DEMO_MODE:-}
if [ -z "$MODE" ]; then
  if have_vcluster; then MODE=vcluster; else MODE=local; fi
fi

rm -f "$OUT/demo.json"
start=$(date +%s)
if [ "$MODE" = vcluster ]; then
  echo "== 2/3 benchmark on a virtual cluster: 2 nodes x 4 ranks, 1 Gbit/s, 100 us per link, mpirun"
  echo "   (progress below; full output in $OUT/demo.log)"
  PYTHON=$PY scripts/bench_vcluster.sh --nodes 2 --ranks-per-node 4 --rate 1gbit --delay 100us \
      --launcher mpirun --timeout 900 -- "${BENCH[@]}" >"$OUT/demo.log" 2>&1 &
  pid=$!
else
  if [ "$(id -u)" != 0 ]; then why="not root"; else why="iproute2/util-linux/mpirun missing"; fi
  echo "== 2/3 benchmark on this host ($why: no virtual cluster): 8 ranks, nodes emulated with"
  echo "   MULTIWRITE_RANKS_PER_NODE=4 (no shaped links: no physical bound); full output in $OUT/demo.log"
  MULTIWRITE_RANKS_PER_NODE=4 timeout 900 mpirun -n 8 --oversubscribe --bind-to none \
      --mca btl self,tcp --mca btl_tcp_if_include lo \
      --mca mpi_yield_when_idle 1 --mca threads_pthreads_yield_strategy nanosleep \
      "$PY" -m multiwrite.bench "${BENCH[@]}" >"$OUT/demo.log" 2>&1 &
  pid=$!
fi
# progress: the benchmark's own progress lines (rank 0, stderr) as they come
tail -n +1 -f "$OUT/demo.log" --pid "$pid" 2>/dev/null | grep --line-buffered -a -o "\[bench .*\|vcluster: [a-z].*" || true
if ! wait "$pid"; then
  echo "demo: the benchmark failed; the end of $OUT/demo.log:" >&2
  tail -n 40 "$OUT/demo.log" >&2
  exit 1
fi
echo "   benchmark took $(( $(date +%s) - start ))s"

echo "== 3/3 results ($OUT/demo.json, plot $OUT/demo.png)"
"$PY" -c "import sys; from multiwrite.bench.common import show; sys.exit(show(sys.argv[1]))" "$OUT/demo.json"
