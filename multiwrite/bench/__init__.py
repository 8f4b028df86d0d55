"""Benchmarks: ``python -m multiwrite.bench <name> [options]``.

Each benchmark is a module of this package with ``add_arguments(parser)`` and ``main(args) -> int``
(a module docstring's first line is its help). ``BENCHMARKS`` maps subcommand names to modules;
names whose module does not exist yet are left out of the command line.
"""
import importlib
import importlib.util

BENCHMARKS = {
    "core": "multiwrite.bench.core",            # C++ core pack/unpack throughput vs memcpy
    "allgather": "multiwrite.bench.allgather",
    "dispatch": "multiwrite.bench.dispatch",
    "combine": "multiwrite.bench.combine",
    "all": "multiwrite.bench.all",
}


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


def parse_size(text):
    """'64K' -> 65536, '1M', '2G', '4096' (binary units)."""
    t = text.strip().upper().rstrip("B").rstrip("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in "KMG" else t
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise ValueError(f"bad size {text!r} (examples: 4096, 64K, 1M, 2G)") from None
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return value


def parse_sizes(text, factor=4):
    """'64K..64M' -> 64K, 256K, ... 64M (times ``factor``); '1M,4M' -> a list."""
    if ".." in text:
        lo, hi = (parse_size(p) for p in text.split("..", 1))
        if lo > hi:
            raise ValueError(f"empty size range {text!r}")
        sizes = []
        while lo <= hi:
            sizes.append(lo)
            lo *= factor
        return sizes
    return [parse_size(p) for p in text.split(",") if p.strip()]


def format_size(n):
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return str(n)
