# SPDX-License-Identifier: MIT
"""Helper commands and the host's processes: running ip/tc/unshare with a timeout, what a failed one
most likely means, the network namespaces and the processes in them, process identity and killing."""

import os
import signal
import subprocess
import time

from .common import VClusterError

CMD_TIMEOUT = 30                      # seconds for every ip/tc helper command


def run(argv, check=True, timeout=CMD_TIMEOUT):
    """Run a helper command (ip, tc, ...) with a timeout; raise VClusterError on failure if check."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        raise VClusterError(f"command timed out after {timeout}s: {' '.join(argv)}")
    except FileNotFoundError:
        raise VClusterError(f"command not found: {argv[0]}")
    if check and p.returncode != 0:
        hint = failure_hint(argv, p.stderr)
        raise VClusterError(f"command failed ({p.returncode}): {' '.join(argv)}\n{p.stderr.strip()}"
                            + (f"\n{hint}" if hint else ""))
    return p


# What a failed ip/tc command most likely means on a host that lacks a kernel feature or a privilege,
# and what to do about it: (words of the command, words of its error, advice).
_FAILURE_HINTS = (
    (("netns", "add"), ("permission", "not permitted", "mount"),
     "this process may not create network namespaces: root inside a container needs CAP_SYS_ADMIN and "
     "CAP_NET_ADMIN (e.g. docker run --privileged); the tests that need a virtual cluster are skipped then"),
    (("type", "veth"), ("unknown", "not supported", "no such"),
     "the kernel has no veth devices (CONFIG_VETH): load the module on the host (modprobe veth)"),
    (("type", "bridge"), ("unknown", "not supported", "no such"),
     "the kernel has no bridge devices (CONFIG_BRIDGE): load the module on the host (modprobe bridge)"),
    (("htb",), ("unknown", "no such", "not supported", "specified qdisc"),
     "the kernel has no htb qdisc (CONFIG_NET_SCH_HTB), which shapes the link rate: modprobe sch_htb on "
     "the host"),
    (("bfifo",), ("unknown", "no such", "not supported", "specified qdisc"),
     "the kernel has no bfifo qdisc (CONFIG_NET_SCH_FIFO): modprobe sch_fifo on the host"),
    (("ingress",), ("unknown", "no such", "not supported", "specified qdisc"),
     "the kernel has no ingress qdisc (CONFIG_NET_SCH_INGRESS), which the user-space delay line needs: "
     "modprobe sch_ingress on the host, or use a kernel with sch_netem (--delay-mode netem)"),
    (("mirred",), ("unknown", "no such", "not supported", "action"),
     "the kernel has no mirred action / u32 filter (CONFIG_NET_ACT_MIRRED, CONFIG_NET_CLS_U32), which the "
     "user-space delay line needs: modprobe act_mirred cls_u32 on the host, or use --delay 0"),
)


def failure_hint(argv, stderr):
    """Advice for a failed ip/tc command (see _FAILURE_HINTS), or None."""
    words, err = set(argv), stderr.lower()
    for need, symptoms, advice in _FAILURE_HINTS:
        if all(w in words for w in need) and any(x in err for x in symptoms):
            return advice
    return None


def netns_list():
    """The names of the host's network namespaces (`ip netns list`)."""
    p = run(["ip", "netns", "list"], check=False)
    names = []
    for line in p.stdout.splitlines():
        if line.strip():
            names.append(line.split()[0])
    return names


def netns_pids(ns):
    """The processes that live in network namespace ``ns``."""
    p = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split() if x.isdigit()]


def proc_starttime(pid):
    """When process ``pid`` started (clock ticks since boot; with the pid, it names one process), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
        return int(data[data.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid, starttime):
    """Process ``pid`` exists and, when ``starttime`` is known, is the one that started then."""
    st = proc_starttime(pid)
    return st is not None and (starttime is None or st == starttime)


def process_exists(pid):
    """Process ``pid`` exists and has not exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def _wait_until_gone(pids, seconds):
    """Wait up to ``seconds`` for ``pids`` to exit; returns those still running."""
    deadline = time.monotonic() + seconds
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if process_exists(p)]
        if pids:
            time.sleep(0.05)
    return pids


def _signal_pids(pids, sig):
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def kill_pids(pids, grace=2.0):
    """SIGTERM, wait up to grace seconds, SIGKILL the survivors."""
    me = os.getpid()
    pids = [p for p in pids if p != me]
    _signal_pids(pids, signal.SIGTERM)
    pids = _wait_until_gone(pids, grace)
    _signal_pids(pids, signal.SIGKILL)
    _wait_until_gone(pids, 2.0)
