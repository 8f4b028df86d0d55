#!/usr/bin/env bash
# Run a multiwrite benchmark (or the stress test) on a virtual cluster: N network namespaces with
# tc-shaped links (launch/vcluster; needs root and iproute2), launched with mpirun or torchrun.
#
#   scripts/bench_vcluster.sh [--nodes 2] [--ranks-per-node 4] [--rate 1gbit] [--delay 100us]
#                             [--launcher mpirun|torchrun] [--timeout 3600] [--delay-line auto|c|python]
#                             [--tcp-congestion auto|cubic|reno|bbr|inherit|...]
#                             -- <bench args>
#
#   scripts/bench_vcluster.sh -- all -b 4K -e 4M --json docs/results/all.json --plot docs/results/all.png
#   scripts/bench_vcluster.sh --launcher torchrun -- allgather -b 1M -e 4M
#   MW_MODULE=multiwrite.stress scripts/bench_vcluster.sh -- --duration 5m
# --timeout (seconds, default 3600) ends the whole run: a 30-minute stress also needs its warm-up
# prologue and summary inside it. --delay-line: see launch/vcluster --help (default auto: the C line).
# --tcp-congestion: the nodes' TCP congestion control (default auto: cubic where a network namespace may
# select it, else reno; inherit = what a new namespace starts with; see launch/vcluster --help).
#
# Open MPI is given --bind-to none (8 ranks may share 2 cores) and mpi_yield_when_idle with the
# nanosleep yield strategy: a rank waiting in a blocking MPI call (MPI's own Allgather/Alltoallv)
# then sleeps between polls instead of spinning, which would starve the other ranks and the
# vcluster delay line of CPU on an oversubscribed host. OMP_NUM_THREADS=1 on every rank.
# PYTHON (default python3) runs the module; MW_MODULE (default multiwrite.bench) picks it.
set -euo pipefail
cd "$(dirname "$0")/.."
NODES=2 L=4 RATE=1gbit DELAY=100us LAUNCHER=mpirun TIMEOUT=3600 DELAY_LINE=auto TCP_CC=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --ranks-per-node) L=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --delay) DELAY=$2; shift 2 ;;
    --launcher) LAUNCHER=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --delay-line) DELAY_LINE=$2; shift 2 ;;
    --tcp-congestion) TCP_CC=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "bench_vcluster.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
MODULE=${MW_MODULE:-multiwrite.bench}
export OMP_NUM_THREADS=1
args=(--nodes "$NODES" --ranks-per-node "$L" --rate "$RATE" --delay "$DELAY" --launcher "$LAUNCHER"
      --timeout "$TIMEOUT" --delay-line "$DELAY_LINE" --tcp-congestion "$TCP_CC")
if [ "$LAUNCHER" = mpirun ]; then
  for a in --bind-to none --mca mpi_yield_when_idle 1 --mca threads_pthreads_yield_strategy nanosleep \
           -x OMP_NUM_THREADS; do
    args+=("--launcher-arg=$a")
  done
  for v in MULTIWRITE_TIMEOUT MULTIWRITE_TRANSPORT MULTIWRITE_MODE MULTIWRITE_SPIN_US MULTIWRITE_SLEEP_MAX_US MULTIWRITE_PIECE_KIB \
           MULTIWRITE_DECODE_TOKENS MULTIWRITE_REDUCE; do
    if [ -n "${!v:-}" ]; then args+=("--launcher-arg=-x" "--launcher-arg=$v"); fi
  done
  # shellcheck disable=SC2206
  exec launch/vcluster "${args[@]}" -- $PY -m "$MODULE" "$@"
else
  # torchrun takes the module as "-m module" (a leading interpreter is dropped by vcluster)
  exec launch/vcluster "${args[@]}" -- -m "$MODULE" "$@"
fi
