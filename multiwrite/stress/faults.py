"""Faults of the stress test (--delay-rank, --kill-rank, --hang-rank) and how a failing rank reports:
a SIGTERM from the launcher, and the survivors' agreement under ULFM before they exit."""
import os
import signal
import sys
import threading
import time




def check_ranks(args, P):
    """ValueError for a fault option that names no rank, or --kill-rank / --hang-rank without --at."""
    for opt, val in (("--delay-rank", args.delay_rank), ("--kill-rank", args.kill_rank),
                     ("--hang-rank", args.hang_rank)):
        if val is not None and not 0 <= val < P:
            raise ValueError(f"{opt} {val}: no such rank (world size {P})")
    if (args.kill_rank is not None or args.hang_rank is not None) and args.at is None:
        raise ValueError("--kill-rank / --hang-rank need --at (seconds after the start)")


def describe(args):
    """The faults asked for, as the end of the start line."""
    return ((f", delay rank {args.delay_rank} by {args.delay_ms:g} ms" if args.delay_rank is not None else "")
            + (f", kill rank {args.kill_rank} at {args.at:g}s" if args.kill_rank is not None else "")
            + (f", hang rank {args.hang_rank} at {args.at:g}s" if args.hang_rank is not None else ""))


def report_sigterm(state, t_start):
    """On SIGTERM (the launcher stopping the job), say where this rank was, then exit 128 + signal."""
    def on_term(signum, frame):
        print(f"stress: rank {os.environ.get('RANK', os.environ.get('OMPI_COMM_WORLD_RANK', '?'))}: FAILED: "
              f"terminated by {signal.Signals(signum).name} in step #{state['step']} ({state['op']}) after "
              f"{time.monotonic() - t_start:.1f}s: the launcher stops the job (another rank failed?)",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


def note_without_ft(args, g, me):
    """Rank 0: warn that --kill-rank under MPI without ULFM ends the whole job at once."""
    if me == 0 and args.kill_rank is not None and g.transport.name == "mpi" \
            and not getattr(g.transport, "fault_tolerant", False):
        print(f"stress: note: MPI without fault tolerance: when rank {args.kill_rank} dies the launcher aborts "
              f"the whole job before the survivors can report (Open MPI: launch with mpirun --with-ft ulfm)",
              file=sys.stderr, flush=True)


def arm(args, me, t_start):
    """On the rank named by --kill-rank / --hang-rank: SIGKILL / SIGSTOP itself --at seconds after t_start."""
    if me in (args.kill_rank, args.hang_rank):
        sig, opt = (signal.SIGKILL, "--kill-rank") if me == args.kill_rank else (signal.SIGSTOP, "--hang-rank")

        def die():
            print(f"stress: rank {me}: sending myself {sig.name} at {time.monotonic() - t_start:.1f}s as asked "
                  f"({opt} {me} --at {args.at:g})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), sig)
        killer = threading.Timer(max(0.0, args.at - (time.monotonic() - t_start)), die)
        killer.daemon = True
        killer.start()


def delay(args, me):
    """--delay-rank: that rank sleeps --delay-ms before every operation."""
    if args.delay_rank == me and args.delay_ms > 0:
        time.sleep(args.delay_ms / 1e3)


def survivors_agree(g, limit_s):
    """After a failure: revoke the group's communication so that survivors waiting on live peers fail
    at once instead of after the timeout, then wait (at most ``limit_s``) until every survivor has
    reported its own error: otherwise the first survivor's exit status makes the launcher kill the
    others before they can say what they saw. Only under MPI with ULFM (``mpirun --with-ft ulfm``,
    Transport.survivors_agree); nothing to do elsewhere."""
    g.transport.survivors_agree(limit_s)
