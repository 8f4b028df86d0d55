"""All three collective benchmarks in one launch: allgather, then dispatch, then combine (one JSON, one
plot). DOCS["all"] is the subcommand's --help text."""
from . import allgather, moe
from .harness import run_main
from .moe_workload import add_workload_arguments, check_workload, token_counts
from .options import add_common_arguments, check_common_args, element_size, sizes_from_args

DOCS = {"all": """All three collective benchmarks in one launch: allgather, then dispatch, then combine.

-b/-e/-f set the AllGather sizes (bytes per rank, default 4K..4M); -T sets the MoE token counts
(default 256; a range like 64..1024 sweeps). The MoE workload flags (-E -k -H --routing --zipf) and
every common flag apply as in the single benchmarks (python -m multiwrite.bench allgather --help,
dispatch --help, combine --help). --json writes one document with every row (field "benchmark"),
--plot one PNG with a panel per benchmark. Exit status 1 if any result was wrong.
"""}


def add_arguments(parser, name="all"):
    add_common_arguments(parser, sizes_help="AllGather bytes per rank, smallest size (default 4K)")
    add_workload_arguments(parser)


def main(args):
    def prepare():
        check_common_args(args)
        ag_sizes = sizes_from_args(args, allgather.DEFAULT_MIN, allgather.DEFAULT_MAX)
        saved, args.minbytes = args.minbytes, None
        tokens = token_counts(args, args.hidden * element_size(args.dtype))
        args.minbytes = saved
        return ag_sizes, tokens

    def bench(ctx, prepared):
        ag_sizes, tokens = prepared
        return [allgather.bench(ctx, args, ag_sizes), moe.bench(ctx, args, "dispatch", tokens),
                moe.bench(ctx, args, "combine", tokens)]
    return run_main(args, prepare, bench, check=lambda ctx: check_workload(args, ctx.size))
