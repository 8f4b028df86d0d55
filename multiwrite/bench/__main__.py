"""python -m multiwrite.bench <benchmark> [options]; ``--help`` lists the benchmarks."""
import argparse
import importlib
import importlib.util
import sys

from . import available, load

# Collective benchmarks (nccl-tests style; shared timing/checking in common.py): subcommand -> module.
# Their modules take add_arguments(parser, name) and main(args) (args.benchmark names the subcommand).
COLLECTIVES = {
    "allgather": "multiwrite.bench.allgather",
    "dispatch": "multiwrite.bench.moe",
    "combine": "multiwrite.bench.moe",
    "all": "multiwrite.bench.common",
}


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m multiwrite.bench",
                                     description="multiwrite benchmarks (medians, tables, optional JSON)")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in available():
        if name in COLLECTIVES:
            continue
        mod = load(name)
        doc = (mod.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else name, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    for name, path in COLLECTIVES.items():
        if importlib.util.find_spec(path) is None:
            continue
        mod = importlib.import_module(path)
        if not hasattr(mod, "add_arguments"):
            continue
        doc = getattr(mod, "DOCS", {}).get(name) or mod.__doc__ or name
        p = sub.add_parser(name, help=doc.strip().splitlines()[0], description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p, name)
        p.set_defaults(_module=mod)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args._module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
