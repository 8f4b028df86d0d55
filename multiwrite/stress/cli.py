"""Long randomized stress test: ``python -m multiwrite.stress --duration 30m`` under mpirun or torchrun.

    mpirun --with-ft ulfm -n 8 python -m multiwrite.stress --duration 30m --json stress.json
    torchrun --nproc-per-node 8 -m multiwrite.stress --duration 30m

(``--with-ft ulfm``: Open MPI 5's fault tolerance (ULFM), so that a dead rank makes the survivors' MPI
calls fail and each survivor report it, instead of prterun killing the whole job; only --kill-rank
needs it. It cannot be set through the environment: OMPI_MCA_mpi_ft_enable=1 alone leaves prterun
killing the job.)

Every rank runs the same randomized sequence of operations (a shared generator seeded by --seed and
the step number decides the operation and its parameters; each rank's data comes from the seed, the
step and the rank):

* ``allgather``  mw.all_gather of 1 byte .. --max-bytes per rank, random dtype and mode;
* ``multiwrite`` mw.Window multi_write: every rank writes a random payload to a random subset of
  ranks (itself included or not, empty sets too) at random offsets (one offset for all, or a list),
  random mode; between two fences; windows are created and freed along the way. Bytes nobody wrote
  must still hold the poison pattern; the arrival counters must count exactly the writes received;
* ``dispatch``   mw.Buffer.dispatch with random token counts per rank (0 included), hidden size, dtype,
  E, k and routing (uniform, uniform with -1 slots, Zipf-skewed, all to one node, none at all),
  random mode, sometimes repeated with the handle (cached dispatch) on new data;
* ``combine``    mw.Buffer.combine of that dispatch's rows (small integers, so sums are exact); half of
                 the calls write them in place into Buffer.get_combine_buffer's zero-copy buffer.

Every result is compared byte for byte with a reference each rank computes locally from the seeds
(never from what the network delivered). Rank 0 shows a progress bar on stderr (ops, bytes verified,
wrong bytes, running p50/p99 per operation of its own calls). The final summary gives, per operation,
the count and p50/p99/max latency (each call's time = max over ranks), the bytes verified, the wrong
bytes (the exit status is 1 if any), and every rank's RSS (VmRSS) at start, after warm-up and at the
end: growth after warm-up in MiB and %, split into anonymous and shared-memory pages, the highest RSS
seen after warm-up (sampled at every agreement), and the RSS right after malloc_trim(0) at the
warm-up point and at the end ("in use": without the free heap pages glibc keeps, which come and go
by tens of MiB with the sizes of the last temporaries). To keep that apart from leaks, the stress
sets glibc's mmap threshold to a fixed 256 KiB (--malloc-mmap-threshold): large temporaries then go
back to the kernel when freed instead of staying in the heap. Both readings are taken after reading
one byte of every page of the node-shared memory the rank maps (a shared page counts in a rank's
RSS only once that rank touched it, which otherwise happens bit by bit as routings vary).

Warm-up: the run starts with a prologue that runs every operation at every power-of-two size up to
its maximum and at its worst-case routing (every token to k = 8 experts spread over all ranks, float32,
largest hidden size and token count; MAX_WINDOWS windows of the largest size), in both modes, then
--warmup random steps. The runtime keeps its node-shared and private buffers at the largest size
seen, and the driver reuses its own buffers: after the warm-up they have their final sizes (the
summary checks it: "grow-only buffers ... unchanged after warm-up"), so RSS growth after the
warm-up would be a leak. Windows are the application's memory and the mix frees and creates them
with random sizes: right before the warm-up reading and again before the end reading, all windows
are freed and MAX_WINDOWS windows of the largest size are created and written, so that both
readings count the same windows.

Faults: ``--delay-rank R --delay-ms X`` makes rank R sleep X ms before every operation (results must
stay right); ``--kill-rank R --at S`` SIGKILLs rank R S seconds after the start: the survivors must
fail with a clear error within the timeout (MULTIWRITE_TIMEOUT, or --timeout), never hang; exit 3.
Under mpirun this needs ``mpirun --with-ft ulfm`` (without it prterun kills the whole job as soon as
a rank dies, before the survivors can say anything): each survivor prints "stress: rank R: FAILED in
step #N (op) ...: MultiwriteError: ...: MPI error: MPI_ERR_PROC_FAILED ... (dead peer: rank R')"
(or MPI_ERR_REVOKED: the first survivor to see the failure revokes the communicator so that no one
waits for the timeout; or a node-local wait's timeout), and waits until every survivor has reported
(MPI_Comm_agree, at most the timeout) before exiting. Under torchrun the agent SIGTERMs the
survivors as soon as a worker dies (each says so). ``--hang-rank R --at S`` SIGSTOPs rank R instead
(alive, silent): the survivors must time out after MULTIWRITE_TIMEOUT.
"""
import argparse
import sys

from .._util import duration_arg, size_arg
from .memory import set_malloc_mmap_threshold
from .runner import run
from .workloads import OPS


def build_parser():
    p = argparse.ArgumentParser(prog="python -m multiwrite.stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=duration_arg, default=duration_arg("60s"),
                   help="how long to run: 90s, 30m, 2h (default 60s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the operation sequence and the data (default 1)")
    p.add_argument("--ops", default=",".join(OPS),
                   help=f"operations to mix (default {','.join(OPS)}; combine implies dispatch)")
    p.add_argument("--max-bytes", type=size_arg, default=size_arg("1M"),
                   help="largest AllGather chunk / multi_write payload per rank (default 1M)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens per rank in dispatch (default 256)")
    p.add_argument("--max-hidden", type=int, default=2048, help="largest hidden size in dispatch (default 2048)")
    p.add_argument("--warmup", type=int, default=100,
                   help="random steps after the maximum-size prologue that still count as warm-up: warm-up steps "
                        "are verified but not counted in the latency statistics nor in the RSS growth (default 100)")
    p.add_argument("--sync-every", type=int, default=4,
                   help="steps between two agreements on stopping / progress updates (default 4)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds any wait on a peer may take (sets MULTIWRITE_TIMEOUT; default: its value or 300)")
    p.add_argument("--delay-rank", type=int, default=None, metavar="R", help="fault: rank R sleeps before every op")
    p.add_argument("--delay-ms", type=float, default=0.0, metavar="X", help="fault: ... for X ms")
    p.add_argument("--kill-rank", type=int, default=None, metavar="R", help="fault: SIGKILL rank R ...")
    p.add_argument("--hang-rank", type=int, default=None, metavar="R",
                   help="fault: rank R stops (SIGSTOP: alive, sockets open, silent) ...")
    p.add_argument("--at", type=duration_arg, default=None, metavar="S",
                   help="... S seconds after the start (10s, 1m), for --kill-rank / --hang-rank")
    p.add_argument("--malloc-mmap-threshold", type=size_arg, default=size_arg("256K"), metavar="BYTES",
                   help="glibc: allocations from this size on come from mmap and go back to the kernel when freed "
                        "(default 256K; 0 = glibc's own, which moves the threshold up to 32 MiB after large frees, "
                        "after which the heap keeps tens of MiB of free temporaries per rank: RSS growth that is "
                        "no leak)")
    p.add_argument("--json", metavar="FILE", help="rank 0 writes the summary as JSON to FILE")
    p.add_argument("--progress-interval", type=float, default=10.0,
                   help="seconds between progress lines when stderr is not a terminal (default 10)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if (args.delay_rank is None) != (args.delay_ms == 0):
        if args.delay_rank is None:
            print("error: --delay-ms needs --delay-rank", file=sys.stderr)
            return 2
    if args.warmup < 0 or args.sync_every < 1 or args.max_tokens < 0 or args.max_hidden < 1:
        print("error: --warmup >= 0, --sync-every >= 1, --max-tokens >= 0, --max-hidden >= 1", file=sys.stderr)
        return 2
    set_malloc_mmap_threshold(args.malloc_mmap_threshold)
    try:
        code = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    import multiwrite as mw
    mw.finalize()
    return code
