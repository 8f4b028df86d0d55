"""python -m multiwrite.bench <benchmark> [options]; ``--help`` lists the benchmarks."""
import argparse
import sys

from . import available, load


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m multiwrite.bench",
                                     description="multiwrite benchmarks (medians, tables, optional JSON)")
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in available():
        mod = load(name)
        doc = (mod.__doc__ or "").strip().splitlines()
        p = sub.add_parser(name, help=doc[0] if doc else name, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args._module.main(args) or 0


if __name__ == "__main__":
    sys.exit(main())
