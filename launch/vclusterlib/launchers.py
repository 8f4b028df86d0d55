# SPDX-License-Identifier: MIT
"""Running the command on the cluster: the environment it gets, the launchers (none: once per node,
torchrun: once per node, mpirun: once in node 0 with launch/vcluster_agent.sh), the child processes with
their output tagged line by line, the --grace / --timeout / delay-line watch, and the exit status."""

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from .cluster import NODE_IF
from .common import LAUNCH_DIR, VClusterError, log, print_lock
from .state import run_dir

AGENT = os.path.join(LAUNCH_DIR, "vcluster_agent.sh")
# given to the command by every launcher as they are (mpirun: forwarded with -x), besides VCLUSTER_NODE_*
FORWARDED_DEFAULTS = ("GLOO_SOCKET_IFNAME", "PYTHONUNBUFFERED")    # set only when not set already

_libc = None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
except Exception:          # pragma: no cover
    _prctl = None


def _pdeathsig_term():
    """In the forked child: get SIGTERM if vcluster itself dies (even by SIGKILL)."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM, 0, 0, 0)          # PR_SET_PDEATHSIG


class Child:
    """One launched process (its own session), its output copied to ours with a [tag] prefix."""

    def __init__(self, tag, argv, env):
        self.tag = tag
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, start_new_session=True,
                                     preexec_fn=_pdeathsig_term)
        self.rc = None
        self.killed = False
        self.threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, sys.stdout), daemon=True),
                        threading.Thread(target=self._pump, args=(self.proc.stderr, sys.stderr), daemon=True)]
        for t in self.threads:
            t.start()

    def _pump(self, pipe, out):
        """Copy the child's lines to our stdout/stderr with a [tag] prefix.  If our output breaks (closed
        pipe), keep draining the child's pipe so that it never blocks on a full pipe."""
        prefix = f"[{self.tag}] ".encode()
        broken = False
        try:
            for line in iter(pipe.readline, b""):
                if broken:
                    continue
                if not line.endswith(b"\n"):
                    line += b"\n"
                try:
                    with print_lock:
                        out.buffer.write(prefix + line)
                        out.buffer.flush()
                except (OSError, ValueError):
                    broken = True
        except (OSError, ValueError):
            pass

    def poll(self):
        """The exit status (128 + signal for a signal), None while it runs."""
        if self.rc is None:
            rc = self.proc.poll()
            if rc is not None:
                self.rc = rc if rc >= 0 else 128 - rc
        return self.rc

    def kill(self, sig):
        """Signal the child's whole process group (it may have exited while its children live on)."""
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_children(children, grace=3.0):
    """SIGTERM the running children, SIGKILL every child's group after ``grace`` seconds, reap them."""
    alive = [c for c in children if c.proc.poll() is None]
    for c in alive:
        c.killed = True
        c.kill(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(c.proc.poll() is None for c in alive):
        time.sleep(0.05)
    for c in children:
        c.kill(signal.SIGKILL)      # the whole process group, also grandchildren of exited leaders
    for c in children:
        try:
            c.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def cluster_env(cl):
    """The variables that describe the cluster, the same for every node (see --help)."""
    a = cl.args
    return {
        "MULTIWRITE_VCLUSTER_RATE": str(a.rate),
        "MULTIWRITE_VCLUSTER_DELAY_US": str(a.delay_us),
        "MULTIWRITE_VCLUSTER_PATH_DELAY_US": str(2 * a.delay_us),
        "MULTIWRITE_VCLUSTER_TCP_CC": cl.tcp_cc,
        "VCLUSTER_PREFIX": cl.prefix,
        "VCLUSTER_NNODES": str(cl.n),
        "VCLUSTER_RANKS_PER_NODE": str(a.ranks_per_node),
        "VCLUSTER_MASTER_ADDR": cl.addrs[0],
        "VCLUSTER_NODE_ADDRS": ",".join(cl.addrs),
        "VCLUSTER_NODE_NAMES": ",".join(cl.nodes),
        "VCLUSTER_SUBNET": str(cl.subnet),
    }


def node_env(cl, i):
    """The environment of the command in node i: ours, the cluster's variables and the node's own."""
    env = dict(os.environ)
    env.update(cluster_env(cl))
    env.setdefault("GLOO_SOCKET_IFNAME", NODE_IF)
    env.setdefault("PYTHONUNBUFFERED", "1")        # so that output streams line by line
    env["VCLUSTER_NODE_RANK"] = str(i)
    env["VCLUSTER_NODE_NAME"] = cl.nodes[i]
    return env


def build_launch(cl):
    """[(tag, argv, env)] for the chosen launcher."""
    a = cl.args
    cmd = list(a.command)
    out = []
    if a.launcher == "none":
        for i in range(cl.n):
            out.append((f"n{i}", cl.ns_exec(i, cmd), node_env(cl, i)))
    elif a.launcher == "torchrun":
        torchrun = shutil.which("torchrun")
        if re.fullmatch(r"python[0-9.]*", os.path.basename(cmd[0])) or \
                os.path.realpath(shutil.which(cmd[0]) or cmd[0]) == os.path.realpath(sys.executable):
            cmd = cmd[1:]
            if not cmd:
                raise VClusterError("--launcher torchrun needs a script (or -m module) after --")
        for i in range(cl.n):
            argv = [torchrun, "--nnodes", str(cl.n), "--node-rank", str(i),
                    "--nproc-per-node", str(a.ranks_per_node), "--master-addr", cl.addrs[0],
                    "--master-port", str(a.master_port)] + list(a.launcher_arg) + cmd
            out.append((f"n{i}", cl.ns_exec(i, argv), node_env(cl, i)))
    elif a.launcher == "mpirun":
        mpirun = shutil.which("mpirun")
        sub = str(cl.subnet)
        hosts = ",".join(f"{name}:{a.ranks_per_node}" for name in cl.nodes)
        argv = [mpirun, "--host", hosts, "-n", str(cl.n * a.ranks_per_node),
                "--prtemca", "plm_ssh_agent", AGENT,
                "--prtemca", "prte_if_include", sub,
                "--mca", "btl", a.mpi_btl,
                "--mca", "btl_tcp_if_include", sub,
                "--tag-output"]
        if os.geteuid() == 0:
            argv.append("--allow-run-as-root")
        for var in list(cluster_env(cl)) + list(FORWARDED_DEFAULTS):
            argv += ["-x", var]          # VCLUSTER_NODE_RANK / _NAME: set per node by the agent
        argv += list(a.launcher_arg) + cmd
        out.append(("mpirun", cl.ns_exec(0, argv), node_env(cl, 0)))
    return out


def run_command(cl):
    """Run the command on the cluster; returns vcluster's exit status (see --help: exit status)."""
    a = cl.args
    launches = build_launch(cl)
    entry = len(cl.ns_exec(0, []))          # the words that enter a node, not shown in the log line
    log(f"launching ({a.launcher}): " + " ".join(launches[0][1][entry:] if launches else []))
    children = []
    t0 = time.monotonic()
    try:
        for tag, argv, env in launches:
            children.append(Child(tag, argv, env))
        first_fail = None
        while True:
            pending = [c for c in children if c.poll() is None]
            if not pending:
                break
            now = time.monotonic()
            if cl.delayline is not None and cl.delayline.poll() is not None:
                log(f"error: the user-space delay line died (exit {cl.delayline.returncode}; see "
                    f"{run_dir(cl.prefix)}/delayline.log): the virtual network is down, killing all nodes")
                kill_children(children)
                return 1
            if a.timeout and now - t0 > a.timeout:
                log(f"timeout: the command ran longer than --timeout {a.timeout:g}s; killing all nodes "
                    "(exit 124)")
                kill_children(children)
                for c in children:
                    c.poll()
                log(f"command killed after {time.monotonic() - t0:.2f}s: "
                    + ", ".join(f"{c.tag}={c.rc}" for c in children) + " -> exit 124")
                return 124
            if first_fail is None:
                for c in children:
                    if c.rc not in (None, 0):
                        first_fail = now
                        log(f"[{c.tag}] exited with {c.rc}; giving the other nodes {a.grace:g}s")
                        break
            elif now - first_fail > a.grace:
                log(f"killing {len(pending)} node(s) still running {a.grace:g}s after a failure")
                kill_children(children)
                break
            time.sleep(0.05)
    finally:
        # processes that are still around (interrupt, exceptions) and the groups of exited leaders
        kill_children(children, grace=2.0)
        for c in children:
            for t in c.threads:
                t.join(timeout=2)
    for c in children:
        c.poll()
    codes = [c.rc for c in children if not c.killed and c.rc is not None]
    if not codes:
        codes = [c.poll() or 1 for c in children]
    worst = max(codes) if codes else 0
    log(f"command finished in {time.monotonic() - t0:.2f}s: "
        + ", ".join(f"{c.tag}={c.rc}{' (killed)' if c.killed else ''}" for c in children)
        + f" -> exit {worst}")
    return worst
