"""python -m multiwrite.bench <benchmark> [options]; ``--help`` lists the benchmarks."""
import sys

from .cli import build_parser, main  # noqa: F401  (tests import both from here)

if __name__ == "__main__":
    sys.exit(main())
