#!/usr/bin/env bash
# The shape matrix: every cluster shape under both launchers, AllGather 1 KiB .. 16 MiB per rank and MoE
# dispatch + combine at T = 1, 8, 32, 256, 1024 tokens per rank (E=64, top-8, H=4096, bf16, uniform
# routing), each run on its own virtual cluster (1 Gbit/s, 100 us per link), every implementation
# interleaved on the same data and every result checked. Then one table and one heat map: MultiWrite ÷
# the faster of MPI's and Gloo's own collectives per cell (python -m multiwrite.bench.matrix).
#
#   bash scripts/bench_matrix.sh                       # about 30 minutes on 2 cores; needs root + iproute2
#   SHAPES="2x4 4x2" LAUNCHERS=mpirun bash scripts/bench_matrix.sh
#   OUT=/tmp/matrix ITERS=5 bash scripts/bench_matrix.sh
#
# Settings (environment): SHAPES (default "2x4 4x2 8x1": NODESxRANKS_PER_NODE), LAUNCHERS (default
# "mpirun torchrun"), ITERS (timed iterations per cell and implementation, default 10), SIZES (AllGather
# -b..-e, default 1K..16M), TOKENS (default 1,8,32,256,1024), OUT (default docs/results/matrix), TCP_CC
# (default auto, see launch/vcluster --help). Under mpirun the baselines are MPI's and Gloo's own; under
# torchrun there is no MPI, so Gloo's only.
#
# Writes OUT/<shape>_<launcher>.json (every row and iteration) and .txt (the tables), OUT/matrix.md (the
# table) and OUT/matrix.png. A run that fails is reported and the others still run; exit status 1 then.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-docs/results/matrix}
PY=${PYTHON:-python3}
SHAPES=${SHAPES:-"2x4 4x2 8x1"}
LAUNCHERS=${LAUNCHERS:-"mpirun torchrun"}
ITERS=${ITERS:-10}
SIZES=${SIZES:-1K..16M}
TOKENS=${TOKENS:-1,8,32,256,1024}
TCP_CC=${TCP_CC:-auto}
mkdir -p "$OUT"

status=0
runs=()
start=$(date +%s)
for shape in $SHAPES; do
  nodes=${shape%x*}; per=${shape#*x}
  for launcher in $LAUNCHERS; do
    name="${shape}_${launcher}"
    impls=gloo,multiwrite
    [ "$launcher" = mpirun ] && impls=mpi,gloo,multiwrite
    cmd=(scripts/bench_vcluster.sh --nodes "$nodes" --ranks-per-node "$per" --rate 1gbit --delay 100us
         --launcher "$launcher" --tcp-congestion "$TCP_CC" --timeout 1800
         -- all -b "${SIZES%..*}" -e "${SIZES#*..}" -f 4 -T "$TOKENS" -n "$ITERS" -w 2 --impls "$impls"
         --json "$OUT/$name.json")
    echo "== [$(( $(date +%s) - start ))s] $name: ${cmd[*]}" >&2
    if "${cmd[@]}" >"$OUT/$name.log" 2>&1; then
      {
        echo "# command: ${cmd[*]}"
        echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ)," \
             "load average after: $(cut -d' ' -f1-3 /proc/loadavg) ($(getconf _NPROCESSORS_ONLN) CPUs)"
        "$PY" -c "import sys; from multiwrite.bench.common import show; sys.exit(show(sys.argv[1]))" "$OUT/$name.json"
      } >"$OUT/$name.txt"
      rm -f "$OUT/$name.log"
      runs+=("$OUT/$name.json")
    else
      echo "bench_matrix.sh: $name failed; the last lines of $OUT/$name.log:" >&2
      tail -n 20 "$OUT/$name.log" >&2
      status=1
    fi
  done
done
if [ ${#runs[@]} -gt 0 ]; then
  "$PY" -m multiwrite.bench.matrix "${runs[@]}" --md "$OUT/matrix.md" --plot "$OUT/matrix.png" || status=1
fi
echo "bench_matrix.sh: ${#runs[@]} run(s) in $(( $(date +%s) - start ))s; table $OUT/matrix.md, plot $OUT/matrix.png" >&2
exit $status
