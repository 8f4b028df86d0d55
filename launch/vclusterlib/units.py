# SPDX-License-Identifier: MIT
"""Link rates and delays as tc writes them: parsing --rate / --delay, formatting a rate."""

import argparse
import re

_RATE_UNITS = {
    "": 1, "bit": 1, "bits": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
    "kibit": 2 ** 10, "mibit": 2 ** 20, "gibit": 2 ** 30, "tibit": 2 ** 40,
    "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
    "kibps": 8 * 2 ** 10, "mibps": 8 * 2 ** 20, "gibps": 8 * 2 ** 30,
    "k": 1e3, "m": 1e6, "g": 1e9,
}
_TIME_UNITS = {"": 1e-6, "us": 1e-6, "usec": 1e-6, "ns": 1e-9, "nsec": 1e-9, "ms": 1e-3, "msec": 1e-3,
               "s": 1.0, "sec": 1.0, "secs": 1.0}


def parse_rate(text):
    """'1gbit' -> 1000000000 (bit/s).  tc conventions: bit/kbit/mbit/gbit, *bps = bytes per second."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)(?:/s)?\s*", text)
    if not m or m.group(2).lower() not in _RATE_UNITS:
        raise argparse.ArgumentTypeError(f"bad rate {text!r} (examples: 1gbit, 100mbit, 50mbit, 12.5mbps)")
    bits = int(round(float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]))
    if bits < 8000:
        raise argparse.ArgumentTypeError(f"rate {text!r} is below 8kbit")
    return bits


def parse_delay_us(text):
    """'100us' -> 100, '5ms' -> 5000 (microseconds; a bare number means microseconds, like tc)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _TIME_UNITS:
        raise argparse.ArgumentTypeError(f"bad delay {text!r} (examples: 100us, 5ms, 0)")
    return int(round(float(m.group(1)) * _TIME_UNITS[m.group(2).lower()] * 1e6))


def fmt_rate(bits):
    """1000000000 -> '1gbit' (the largest unit that divides the rate exactly)."""
    for unit, f in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bits >= f and bits % f == 0:
            return f"{bits // int(f)}{unit}"
    return f"{bits}bit"
