"""Command line of the collective benchmarks: the implementations they compare, the element types,
the flags every one of them takes (nccl-tests names where they exist) and their checks."""
import sys

import torch

from .._util import size_arg

IMPLS = ("mpi", "gloo", "unicast", "multiwrite")
LABELS = {"mpi": "MPI", "gloo": "Gloo", "unicast": "mw-unicast", "multiwrite": "MultiWrite"}
BASELINES = ("mpi", "gloo")
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "half": torch.float16, "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
          "uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32, "int64": torch.int64,
          "float64": torch.float64, "double": torch.float64}


def element_size(dtype_name):
    """Bytes per element of a -d name."""
    return torch.empty(0, dtype=DTYPES[dtype_name]).element_size()


def add_common_arguments(parser, *, sizes_help):
    """Flags every collective benchmark takes (nccl-tests names where they exist)."""
    g = parser.add_argument_group("sizes and iterations (nccl-tests flags)")
    g.add_argument("-b", "--minbytes", type=size_arg, default=None, metavar="SIZE", help=sizes_help)
    g.add_argument("-e", "--maxbytes", type=size_arg, default=None, metavar="SIZE",
                   help="largest size (default: the benchmark's, or -b when only -b is given)")
    g.add_argument("-f", "--stepfactor", type=int, default=4, metavar="F",
                   help="multiply the size by F between -b and -e (default %(default)s)")
    g.add_argument("-n", "--iters", type=int, default=10, metavar="N",
                   help="timed iterations per size and implementation; the median is reported "
                        "(default %(default)s; the convention is >= 10)")
    g.add_argument("-w", "--warmup_iters", type=int, default=2, metavar="W",
                   help="untimed warm-up iterations per size and implementation (default %(default)s; checked too)")
    g.add_argument("-d", "--dtype", default="bfloat16", choices=sorted(DTYPES),
                   help="element type of the data (default %(default)s)")
    g = parser.add_argument_group("what to compare")
    g.add_argument("--impls", default=",".join(IMPLS),
                   help="comma-separated implementations, run interleaved in this order (default %(default)s): "
                        "mpi = MPI's own collective (mpi4py; needs mpirun), gloo = torch.distributed Gloo's own, "
                        "unicast = multiwrite with one copy per destination rank (mode='unicast'), "
                        "multiwrite = multiwrite MultiWrite (one copy per destination node)")
    g.add_argument("--order", choices=("balanced", "fixed"), default="balanced",
                   help="order of the implementations within an iteration: balanced = the rows of a Williams "
                        "square, one per iteration (every implementation comes first equally often and "
                        "follows every other equally often), fixed = always the --impls order. Default "
                        "%(default)s: what ran just before changes a call's time (after Gloo's 14 ms call, "
                        "spent waiting, a 1 KiB MultiWrite all_gather measured 1.4-1.7 ms instead of 0.9-1.1; "
                        "after 15 ms idle, MPI's took 1.03 ms instead of 0.86), so a fixed order biases the table")
    g.add_argument("--seed", type=int, default=1, help="seed of the data and routing (default %(default)s)")
    g = parser.add_argument_group("physical bound (default: MULTIWRITE_VCLUSTER_RATE / _PATH_DELAY_US from launch/vcluster)")
    g.add_argument("--rate", default=None, metavar="RATE",
                   help="node link rate: 1gbit, 100mbit, or bit/s (blank bound when unknown)")
    g.add_argument("--delay", default=None, metavar="DELAY",
                   help="node-to-node one-way latency: 200us, 1ms (vcluster: 2 x its per-link --delay)")
    g = parser.add_argument_group("output")
    g.add_argument("--json", metavar="FILE", help="write the results (every row, every iteration) as JSON to FILE")
    g.add_argument("--plot", metavar="FILE.png", help="write a PNG plot: latency vs size per implementation, bound dashed")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    g = parser.add_argument_group("synchronisation")
    g.add_argument("--barrier", choices=("auto", "mpi", "poll"), default="auto",
                   help="barrier before and after every timed call under mpirun: mpi = MPI_Barrier (tightest start; "
                        "use with --mca mpi_yield_when_idle 1, else waiting ranks spin), poll = MPI_Ibarrier polled "
                        "with sleeps (never spins), auto = mpi when mpi_yield_when_idle is set, else poll "
                        "(default); torchrun: Gloo's barrier")


def sizes_from_args(args, default_lo, default_hi):
    lo = args.minbytes if args.minbytes is not None else default_lo
    hi = args.maxbytes if args.maxbytes is not None else (lo if args.minbytes is not None else default_hi)
    if hi < lo:
        raise ValueError(f"-e {hi} is smaller than -b {lo}")
    if args.stepfactor < 2 and hi > lo:
        raise ValueError("-f must be >= 2")
    sizes = []
    s = lo
    while s <= hi:
        sizes.append(s)
        s *= max(args.stepfactor, 2)
    return sizes


def parse_choices(flag, text, choices):
    """The names of a comma-separated option (``--impls mpi,multiwrite``), each one of ``choices``;
    ValueError naming ``flag`` otherwise (or when none is given)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in choices]
    if bad or not names:
        raise ValueError(f"{flag}: unknown {bad or names}; choose from {','.join(choices)}")
    return names


def check_common_args(args):
    if args.iters < 1 or args.warmup_iters < 0:
        raise ValueError("-n must be >= 1 and -w >= 0")
    return parse_choices("--impls", args.impls, IMPLS)



def fail(ctx, msg):
    """A usage error: rank 0 (or, before the ranks know each other, every process) says so; exit 2."""
    if ctx is None or ctx.rank == 0:
        print(f"error: {msg}", file=sys.stderr, flush=True)
    return 2
