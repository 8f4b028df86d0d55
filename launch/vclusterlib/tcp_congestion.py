# SPDX-License-Identifier: MIT
"""--tcp-congestion: which TCP congestion control the node namespaces get, read and set inside them."""

import argparse
import re

from .common import VClusterError
from .processes import run

TCP_CC_AUTO = "auto"
# --tcp-congestion auto: the first of these that a network namespace may select, else the namespace's own.
# cubic first: it is the Linux default and what the committed results use (BBR ran the link-bound
# benchmarks up to 30 % slower on a 2-core host, docs/benchmarks.md); reno is the fallback every kernel
# allows (it is built in and never restricted).
TCP_CC_PREFERENCE = ("cubic", "reno")
TCP_SYSCTL_DIR = "/proc/sys/net/ipv4"
TCP_CC_SYSCTL = TCP_SYSCTL_DIR + "/tcp_congestion_control"


def parse_tcp_cc(text):
    """A TCP congestion control name (cubic, bbr, reno, ...), 'auto' or 'inherit'."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,15}", text):
        raise argparse.ArgumentTypeError(f"bad TCP congestion control name {text!r} (examples: auto, cubic, "
                                         "reno, bbr, inherit)")
    return text


def choose_tcp_cc(requested, allowed, available, current):
    """The congestion control the node namespaces get, and a note saying why (None when plain).

    ``requested``: --tcp-congestion (``auto``, ``inherit`` or a name); ``allowed``/``available``: the
    lists a network namespace reads in tcp_allowed_congestion_control / tcp_available_congestion_control;
    ``current``: what a new namespace starts with.  Only the initial namespace may select an algorithm
    that is available but not allowed (the kernel answers EPERM), so a name is checked against
    ``allowed``.  Raises VClusterError for a name a namespace cannot select, saying why.
    """
    if requested == "inherit":
        return current, "inherited"
    if requested == TCP_CC_AUTO:
        for name in TCP_CC_PREFERENCE:
            if name in allowed:
                skipped = TCP_CC_PREFERENCE[:TCP_CC_PREFERENCE.index(name)]
                note = None if not skipped else (
                    f"auto: {' and '.join(skipped)} not allowed in a network namespace here; "
                    f"allowed: {' '.join(allowed)}")
                return name, note
        return current, (f"auto: none of {' '.join(TCP_CC_PREFERENCE)} is allowed in a network namespace "
                         f"here, kept the namespace's own; allowed: {' '.join(allowed)}")
    if requested in allowed:
        return requested, None
    if requested in available:
        raise VClusterError(
            f"--tcp-congestion {requested}: the kernel has it, but a network namespace may not select it: "
            f"only the host's initial namespace may use an algorithm that is not in "
            f"net.ipv4.tcp_allowed_congestion_control (allowed: {' '.join(allowed) or 'none'}; available: "
            f"{' '.join(available)}). Choose an allowed one or --tcp-congestion auto, or allow it on the host: "
            f"sysctl -w net.ipv4.tcp_allowed_congestion_control='{' '.join(allowed + [requested])}'")
    raise VClusterError(
        f"--tcp-congestion {requested}: the kernel has no such congestion control loaded (available: "
        f"{' '.join(available) or 'none'}; allowed in a network namespace: {' '.join(allowed) or 'none'}); "
        f"if it is a module, load it on the host (modprobe tcp_{requested}), or use --tcp-congestion auto")


def read_tcp_cc_lists(ns):
    """(allowed, available, current) as network namespace ``ns`` reads them."""
    lists = run(["ip", "netns", "exec", ns, "sh", "-c",
                 f"cd {TCP_SYSCTL_DIR} && cat tcp_allowed_congestion_control; "
                 f"cat tcp_available_congestion_control; cat tcp_congestion_control"], check=False)
    lines = (lists.stdout or "").splitlines()
    if lists.returncode != 0 or len(lines) != 3:
        raise VClusterError(f"cannot read the TCP congestion control settings of namespace {ns} "
                            f"({TCP_SYSCTL_DIR}): {lists.stderr.strip() or 'no output'}")
    return lines[0].split(), lines[1].split(), lines[2].strip()


def set_tcp_cc(ns, name):
    """Make ``name`` the TCP congestion control of network namespace ``ns``."""
    p = run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {name} > {TCP_CC_SYSCTL}"], check=False)
    if p.returncode != 0:
        raise VClusterError(f"cannot set TCP congestion control {name} in namespace {ns}: "
                            f"{p.stderr.strip() or 'write refused'} (try --tcp-congestion inherit)")
