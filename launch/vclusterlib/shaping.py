# SPDX-License-Identifier: MIT
"""Link shaping with tc: htb for the rate, netem for the delay (or bfifo for the queue alone), the probe
for sch_netem and the choice of how the delay is made (--delay-mode)."""

from .common import VClusterError
from .processes import run


def netem_works(ns, dev):
    """Whether this kernel has sch_netem: a netem qdisc added at the root of ``dev`` (then removed)."""
    p = run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:",
             "netem", "delay", "1ms"], check=False)
    if p.returncode == 0:
        run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
        return True
    return False


def choose_delay_mode(requested, delay_us, ns, dev):
    """none (no delay), netem or userspace, from --delay-mode (auto: netem where the kernel has it);
    the netem probe runs on ``dev`` in namespace ``ns``."""
    if delay_us == 0:
        return "none"
    if requested == "auto":
        return "netem" if netem_works(ns, dev) else "userspace"
    if requested == "netem" and not netem_works(ns, dev):
        raise VClusterError("--delay-mode netem: this kernel has no sch_netem (CONFIG_NET_SCH_NETEM); "
                            "use --delay-mode userspace or auto")
    return requested


def shape(ns, dev, rate, queue_bytes, delay_us):
    """htb (rate) at the root of dev's egress; netem (delay) or bfifo (queue) as its leaf."""
    burst = max(int(rate / 8 * 0.001), 2 * 1514)                # 1 ms of line rate, >= 2 frames
    tcq = ["tc", "-n", ns]
    run(tcq + ["qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"])
    run(tcq + ["class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
               "rate", f"{rate}bit", "ceil", f"{rate}bit", "burst", str(burst), "cburst", str(burst),
               "quantum", "65536"])
    if delay_us > 0:
        limit = max(1000, queue_bytes // 1500)
        run(tcq + ["qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "netem",
                   "delay", f"{delay_us}us", "limit", str(limit)])
    else:
        run(tcq + ["qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "bfifo",
                   "limit", str(queue_bytes)])
