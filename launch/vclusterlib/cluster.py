# SPDX-License-Identifier: MIT
"""The Cluster: registers a run, builds it (switch namespace with a bridge, one node namespace per node
with a veth into the bridge, hosts files, TCP congestion control, shaping, the delay line where one is
needed), says how to run a command in a node, and tears it all down."""

import os
import time

from . import delayline
from .common import PROG, VClusterError, log
from .processes import netns_list, proc_starttime, run
from .shaping import choose_delay_mode, shape
from .state import NETNS_ETC, StateLock, choose_subnet, load_states, run_dir, teardown_state, write_state
from .tcp_congestion import choose_tcp_cc, read_tcp_cc_lists, set_tcp_cc
from .units import fmt_rate

NODE_IF = "eth0"                      # interface name inside every node namespace
BRIDGE = "br0"                        # bridge name inside the switch namespace
# sets the hostname of the (new) UTS namespace to $0; no dependency on the `hostname` program
SET_HOSTNAME = """printf '%s\\n' "$0" > /proc/sys/kernel/hostname"""


class Cluster:
    def __init__(self, args):
        self.args = args
        self.prefix = args.prefix
        self.n = args.nodes
        self.sw = f"{self.prefix}-sw"
        self.nodes = [f"{self.prefix}-n{i}" for i in range(self.n)]
        self.subnet = None
        self.addrs = []
        self.state = None
        self.delay_mode = None
        self.tcp_cc = None                        # what the nodes use: chosen in _set_tcp_cc
        self.tcp_cc_note = None
        self.tcp_cc_choice = None
        self.delayline = None

    # -- state -------------------------------------------------------------------------------------
    def _save(self):
        write_state(self.state)

    def register(self):
        """Claim the prefix and a subnet and record the run (before anything is built)."""
        with StateLock():
            states = load_states()
            if any(st.get("prefix") == self.prefix for st in states) or \
                    any(ns.startswith(self.prefix + "-") for ns in netns_list()):
                raise VClusterError(f"prefix {self.prefix!r} is already in use (see `{PROG} --list`)")
            self.subnet = choose_subnet(self.prefix, states, self.args.subnet, self.n)
            hosts = list(self.subnet.hosts())
            self.addrs = [str(hosts[i]) for i in range(self.n)]
            self.state = {
                "prefix": self.prefix, "pid": os.getpid(), "starttime": proc_starttime(os.getpid()),
                "created": time.time(), "subnet": str(self.subnet), "nodes": self.nodes,
                "addrs": self.addrs, "switch": self.sw, "namespaces": [], "keep": False,
                "rate": self.args.rate, "delay_us": self.args.delay_us,
            }
            self._save()

    # -- construction ------------------------------------------------------------------------------
    def _add_ns(self, ns):
        self.state["namespaces"].append(ns)
        self._save()
        run(["ip", "netns", "add", ns])
        # IPv4-only cluster: no IPv6 on interfaces created from now on (lo keeps ::1)
        run(["ip", "netns", "exec", ns, "sh", "-c",
             "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6"], check=False)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _set_tcp_cc(self, ns):
        """--tcp-congestion in node namespace ``ns``; records the algorithm the nodes really use.

        The choice is made once, from what the first node namespace reads (every node reads the same)."""
        if self.tcp_cc_choice is None:
            allowed, available, current = read_tcp_cc_lists(ns)
            self.tcp_cc_choice = choose_tcp_cc(self.args.tcp_congestion, allowed, available, current)
            self.tcp_cc, self.tcp_cc_note = self.tcp_cc_choice
            self.state["tcp_congestion"] = self.tcp_cc
            self._save()
        if self.args.tcp_congestion == "inherit":
            return
        set_tcp_cc(ns, self.tcp_cc)

    def _plug_into_switch(self, i, port, mode):
        """Put switch port ``port`` of node i on the bridge; userspace mode puts the delay line between."""
        sw = ["ip", "-n", self.sw]
        if mode == "userspace":
            # p<i> (from the node) --delay line--> q<i> == b<i> [br0];  b<i> -> q<i> --mirred--> p<i>
            run(sw + ["link", "add", "name", f"q{i}", "type", "veth", "peer", "name", f"b{i}"])
            run(sw + ["link", "set", f"b{i}", "master", BRIDGE])
            for dev in (port, f"q{i}", f"b{i}"):
                run(sw + ["link", "set", dev, "up"])
            run(["tc", "-n", self.sw, "qdisc", "add", "dev", f"q{i}", "handle", "ffff:", "ingress"])
            run(["tc", "-n", self.sw, "filter", "add", "dev", f"q{i}", "parent", "ffff:", "protocol",
                 "all", "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect",
                 "dev", port])
        else:
            run(sw + ["link", "set", port, "master", BRIDGE])
            run(sw + ["link", "set", port, "up"])

    def create(self):
        """Build the registered cluster (every namespace is recorded before it is made)."""
        a = self.args
        log(f"creating {self.n} nodes: prefix {self.prefix}, subnet {self.subnet}, "
            f"links {fmt_rate(a.rate)} / {a.delay_us}us per direction")
        # switch
        self._add_ns(self.sw)
        run(["ip", "-n", self.sw, "link", "add", "name", BRIDGE, "type", "bridge", "forward_delay", "0",
             "stp_state", "0"])
        run(["ip", "-n", self.sw, "link", "set", BRIDGE, "up"])
        # delay mode
        mode = choose_delay_mode(a.delay_mode, a.delay_us, self.sw, BRIDGE)
        self.delay_mode = mode
        self.state["delay_mode"] = mode
        self._save()
        if mode == "userspace":
            log("kernel has no sch_netem: delay emulated by a user-space delay line in the switch "
                "namespace (rate shaping stays in the kernel)")
        # nodes
        plen = self.subnet.prefixlen
        for i, ns in enumerate(self.nodes):
            self._add_ns(ns)
            self._set_tcp_cc(ns)
            port = f"p{i}"
            run(["ip", "link", "add", "name", NODE_IF, "netns", ns, "type", "veth", "peer", "name", port,
                 "netns", self.sw])
            run(["ip", "-n", ns, "addr", "add", f"{self.addrs[i]}/{plen}", "dev", NODE_IF])
            run(["ip", "-n", ns, "link", "set", NODE_IF, "up"])
            self._plug_into_switch(i, port, mode)
        # hosts files
        self._write_hosts()
        # shaping
        log(f"shaping {self.n} links in both directions: htb {fmt_rate(a.rate)}"
            + (f" + netem {a.delay_us}us" if mode == "netem" else "")
            + (f" + user-space delay line {2 * a.delay_us}us per node-to-node hop" if mode == "userspace"
               else "") + f", queue {a.queue_bytes} bytes; TCP congestion control {self.tcp_cc}"
            + (f" ({self.tcp_cc_note})" if self.tcp_cc_note else ""))
        link_delay = a.delay_us if mode == "netem" else 0
        for i, ns in enumerate(self.nodes):
            shape(ns, NODE_IF, a.rate, a.queue_bytes, link_delay)
            shape(self.sw, f"p{i}", a.rate, a.queue_bytes, link_delay)
        if mode == "userspace":
            self._start_delayline()

    def _write_hosts(self):
        """/etc/netns/<ns>/hosts for every namespace: the host's /etc/hosts plus the node names."""
        try:
            with open("/etc/hosts") as f:
                base = f.read()
        except OSError:
            base = "127.0.0.1 localhost\n"
        if not base.endswith("\n"):
            base += "\n"
        extra = "".join(f"{ip} {name}\n" for ip, name in zip(self.addrs, self.nodes))
        content = base + f"# vcluster {self.prefix}\n" + extra
        for ns in [self.sw] + self.nodes:
            for attempt in range(5):       # another run may rmdir an empty /etc/netns concurrently
                try:
                    os.makedirs(os.path.join(NETNS_ETC, ns), exist_ok=True)
                    with open(os.path.join(NETNS_ETC, ns, "hosts"), "w") as f:
                        f.write(content)
                    break
                except FileNotFoundError:
                    if attempt == 4:
                        raise
                except OSError as e:
                    raise VClusterError(f"cannot write {NETNS_ETC}/{ns}/hosts ({e.strerror}): the node names "
                                        f"resolve through it (ip netns exec mounts it over /etc/hosts), so "
                                        f"{NETNS_ETC} must be writable") from None
        # the node names for launch/vcluster_agent.sh (mpirun may name a node by address)
        with open(os.path.join(run_dir(self.prefix), "hosts"), "w") as f:
            f.write(extra)

    def _delayline_log(self):
        return os.path.join(run_dir(self.prefix), "delayline.log")

    def _start_delayline(self):
        a = self.args
        program = delayline.delayline_program(a.delay_line)
        self.state["delay_line"] = "python" if program is None else "c"
        log(f"delay line: {self.state['delay_line']}"
            + (" (no C compiler or the build failed: the Python line costs ~1/3 core per Gbit/s)"
               if program is None and a.delay_line == "auto" else ""))
        pairs = [f"p{i}:q{i}" for i in range(self.n)]
        self.delayline = delayline.spawn(program, self.sw, 2 * a.delay_us, max(a.queue_bytes * self.n, 16 << 20),
                                         pairs, self._delayline_log())
        delayline.wait_until_ready(self.delayline, self._delayline_log())
        self.state["delayline_pid"] = self.delayline.pid
        self._save()

    # -- use ---------------------------------------------------------------------------------------
    def ns_exec(self, i, argv):
        """argv to run argv in node i: its network namespace and a fresh UTS namespace (hostname)."""
        return ["ip", "netns", "exec", self.nodes[i], "unshare", "--uts", "--", "sh", "-c",
                SET_HOSTNAME + ' && exec "$@"', self.nodes[i]] + list(argv)

    def teardown(self):
        """Stop the delay line (logging its report) and remove everything; False if anything is left."""
        if self.state is None:
            return True
        if self.delayline is not None:
            delayline.stop(self.delayline, self._delayline_log())
        return teardown_state(self.state)
