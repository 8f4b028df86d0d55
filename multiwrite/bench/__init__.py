"""Benchmarks: ``python -m multiwrite.bench <name> [options]`` (the command line: cli.py).

Each benchmark is a module of this package with ``add_arguments(parser)`` (collectives:
``add_arguments(parser, name)``) and ``main(args) -> int``; its help is ``DOCS[name]`` or its module
docstring (the first line is the one-line help). ``BENCHMARKS`` maps subcommand names to modules.

The collective benchmarks share small modules, imported in one direction only (benchmarks -> shared,
never back): options.py (flags), context.py (SPMD set-up), harness.py (interleaved timing),
checks.py, bound.py (physical bound), report.py (rows, tables, JSON), plot.py. The benchmarks:
allgather.py; moe.py (dispatch and combine: moe_workload.py, dispatch.py, combine.py); all.py (the
three in one launch); core.py (C++ core pack/unpack throughput, single process). common.py only
re-exports names for older imports (``from multiwrite.bench.common import show``).
"""
import importlib
import importlib.util

from .._util import format_size, parse_size, parse_sizes  # noqa: F401  (their home before multiwrite._util)

TOOLS = {
    "core": "multiwrite.bench.core",            # C++ core pack/unpack throughput vs memcpy
}
COLLECTIVES = {                                 # nccl-tests style: interleaved, checked, physical bound
    "allgather": "multiwrite.bench.allgather",
    "dispatch": "multiwrite.bench.moe",
    "combine": "multiwrite.bench.moe",
    "reduce": "multiwrite.bench.reduce",       # all_reduce / reduce_scatter vs MPI's and Gloo's
    "all": "multiwrite.bench.all",
}
BENCHMARKS = {**TOOLS, **COLLECTIVES}


def available():
    """{name: module path} for the benchmarks that are installed."""
    out = {}
    for name, mod in BENCHMARKS.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ImportError:
            found = False
        if found:
            out[name] = mod
    return out


def load(name):
    return importlib.import_module(available()[name])
