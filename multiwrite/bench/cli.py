"""The command line ``python -m multiwrite.bench <benchmark> [options]``: one subcommand per benchmark."""
import argparse

from . import COLLECTIVES, available, load


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m multiwrite.bench",
                                     description="multiwrite benchmarks (medians, tables, optional JSON)")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in available():
        mod = load(name)
        if name in COLLECTIVES:
            # Collectives take add_arguments(parser, name) and main(args) (args.benchmark names the
            # subcommand); their help keeps its line breaks.
            doc = getattr(mod, "DOCS", {}).get(name) or mod.__doc__ or name
            p = sub.add_parser(name, help=doc.strip().splitlines()[0], description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            mod.add_arguments(p, name)
        else:
            doc = (mod.__doc__ or "").strip().splitlines()
            p = sub.add_parser(name, help=doc[0] if doc else name, description=mod.__doc__)
            mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args._module.main(args) or 0
