"""The physical bound of a collective: the bytes that must cross the busiest node link (with dedup)
at the link rate, plus one node-to-node latency; the link parameters from flags or the vcluster."""
import os

from .._util import parse_delay_us, parse_rate


def link_params(args):
    """(rate bit/s or None, node-to-node one-way latency in us or None, where they came from)."""
    rate = parse_rate(args.rate) if getattr(args, "rate", None) else None
    delay = parse_delay_us(args.delay) if getattr(args, "delay", None) else None
    src = "flags" if rate else None
    if rate is None and os.environ.get("MULTIWRITE_VCLUSTER_RATE"):
        rate = float(os.environ["MULTIWRITE_VCLUSTER_RATE"])
        src = "vcluster"
    if delay is None:
        if os.environ.get("MULTIWRITE_VCLUSTER_PATH_DELAY_US"):
            delay = float(os.environ["MULTIWRITE_VCLUSTER_PATH_DELAY_US"])
        elif os.environ.get("MULTIWRITE_VCLUSTER_DELAY_US"):
            delay = 2 * float(os.environ["MULTIWRITE_VCLUSTER_DELAY_US"])
    if rate is not None and delay is None:
        delay = 0.0
    return rate, delay, src


def bound_us(egress, ingress, rate, delay_us):
    """max over node links (both directions) of bytes / rate + one node-to-node latency (us);
    None when the rate is unknown or nothing crosses a link."""
    if not rate:
        return None
    worst = max(list(egress) + list(ingress) + [0])
    if worst <= 0:
        return None
    return worst * 8 / rate * 1e6 + (delay_us or 0.0)

