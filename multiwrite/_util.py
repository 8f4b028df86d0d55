"""Small helpers shared by the tools (benchmarks, stress test): units of sizes, rates and durations
(parse and format), percentiles, argparse types, and polling with back-off. Standard library only.
"""
import argparse
import math
import time

# ---------------------------------------------------------------------------------------------------
# sizes (binary units)


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
    """Exact sizes as parse_size reads them: 65536 -> '64K', 1000 -> '1000'."""
    for unit, m in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= m and n % m == 0:
            return f"{n // m}{unit}"
    return str(n)


def format_bytes(n):
    """A byte count for people: '1.50 MiB', '512 B'."""
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m:
            return f"{n / m:.2f} {unit}"
    return f"{int(n)} B"


def format_bytes_short(n):
    """A byte count for a narrow table column: '12.3Mi', '15.0Ki', '9999'; None -> '-'."""
    if n is None:
        return "-"
    if n >= 10 << 20:
        return f"{n / (1 << 20):.1f}Mi"
    if n >= 10 << 10:
        return f"{n / (1 << 10):.1f}Ki"
    return str(int(n))


# ---------------------------------------------------------------------------------------------------
# rates and durations


def _with_unit(text, units):
    """float(text) times the factor of the first suffix in ``units`` ((suffix, factor) pairs, tried in
    order) that ``text`` ends with; a bare number has factor 1. ValueError when not a number."""
    t = str(text).strip().lower()
    for suffix, mult in units:
        if t.endswith(suffix):
            return float(t[:-len(suffix)]) * mult
    return float(t)


def parse_rate(text):
    """'1gbit', '100mbit', '1e9', '125mbps' (bytes/s, tc convention) -> bit/s."""
    return _with_unit(text, [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("gbps", 8e9), ("mbps", 8e6),
                             ("kbps", 8e3), ("bit", 1.0), ("bps", 8.0)])


def parse_delay_us(text):
    """'100us', '5ms', '0', '0.2s' -> microseconds (a bare number is microseconds)."""
    return _with_unit(text, [("us", 1.0), ("ms", 1e3), ("s", 1e6)])


def parse_duration(text):
    """'30m', '90s', '1.5h', '45' (seconds) -> seconds (positive)."""
    try:
        value = _with_unit(text, [("s", 1), ("m", 60), ("h", 3600)])
    except ValueError:
        raise ValueError(f"bad duration {text!r} (examples: 90s, 30m, 2h)") from None
    if value <= 0:
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def format_duration(s):
    """Seconds as '4m05s' or '1h02m03s' (whole seconds)."""
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def arg_type(parse):
    """An argparse ``type`` from a parser that raises ValueError: its message becomes argparse's
    ("argument --x: bad size 'abc' ...") instead of "invalid parse_size value"."""
    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    convert.__name__ = parse.__name__
    return convert


size_arg = arg_type(parse_size)
duration_arg = arg_type(parse_duration)


# ---------------------------------------------------------------------------------------------------
# statistics


def percentile(values, q, empty=None):
    """The q-th percentile by nearest rank (the smallest value with at least q % of the values at or
    below it); ``empty`` when there are no values."""
    if not values:
        return empty
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(math.ceil(q / 100 * len(v))) - 1))]


# ---------------------------------------------------------------------------------------------------
# polling


def poll(test, timeout_s, *, spin_s=0.0, nap_min_s, nap_max_s):
    """Call ``test()`` until it returns true: without sleeping for the first ``spin_s`` seconds, then
    with sleeps that double from ``nap_min_s`` up to ``nap_max_s`` (equal: a fixed interval), so that a
    waiting process never takes the CPU from the ones it waits for. True once ``test()`` is true,
    False when ``timeout_s`` passed first."""
    start = time.monotonic()
    deadline = start + timeout_s
    nap = 0.0
    while not test():
        now = time.monotonic()
        if now > deadline:
            return False
        if now - start > spin_s:
            nap = min(max(nap * 2, nap_min_s), nap_max_s)
            time.sleep(nap)
    return True
