# SPDX-License-Identifier: MIT
"""What a run leaves on the host and how it is recorded and removed: the state files
(/run/vcluster/<prefix>/state.json) and their lock, the choice of a free subnet, the teardown of a
recorded run (shared by normal exit, failures, signals and --cleanup*), and --list / --cleanup."""

import fcntl
import ipaddress
import json
import os
import re
import shutil
import time

from .common import PROG, VClusterError, log
from .processes import kill_pids, netns_list, netns_pids, pid_alive, process_exists, run

STATE_ROOT = "/run/vcluster"          # tmpfs: disappears on reboot together with the namespaces
NETNS_ETC = "/etc/netns"              # `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc/*
DEFAULT_POOL = ipaddress.ip_network("10.213.0.0/16")   # default subnets: 10.213.X.0/24


def run_dir(prefix):
    """/run/vcluster/<prefix>: the run's state.json, hosts list and delay-line log."""
    return os.path.join(STATE_ROOT, prefix)


class StateLock:
    """Exclusive lock over all runs' state (/run/vcluster/.lock) while a run claims a prefix and subnet."""

    def __enter__(self):
        os.makedirs(STATE_ROOT, exist_ok=True)
        self.fd = os.open(os.path.join(STATE_ROOT, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def load_states():
    """The recorded runs, by prefix; an unreadable state file is {"prefix": ..., "broken": True, ...}."""
    states = []
    try:
        entries = sorted(os.listdir(STATE_ROOT))
    except FileNotFoundError:
        return states
    for name in entries:
        path = os.path.join(STATE_ROOT, name, "state.json")
        try:
            with open(path) as f:
                states.append(json.load(f))
        except (OSError, ValueError):
            if os.path.isdir(os.path.join(STATE_ROOT, name)):
                states.append({"prefix": name, "broken": True, "namespaces": [], "pid": None})
    return states


def write_state(state):
    """Record ``state`` atomically (a reader never sees half a file)."""
    d = run_dir(state["prefix"])
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, "state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(d, "state.json"))


def choose_subnet(prefix, states, requested, nnodes):
    """--subnet, checked; else a /24 of DEFAULT_POOL that no recorded run uses (start chosen by prefix)."""
    used = set()
    for st in states:
        if st.get("subnet"):
            used.add(ipaddress.ip_network(st["subnet"]))
    if requested:
        try:
            net = ipaddress.ip_network(requested, strict=False)
        except ValueError as e:
            raise VClusterError(f"bad --subnet {requested!r}: {e}")
        if net.version != 4:
            raise VClusterError("--subnet must be an IPv4 network")
        if net.num_addresses - 2 < nnodes:
            raise VClusterError(f"--subnet {net} is too small for {nnodes} nodes")
        for u in used:
            if net.overlaps(u):
                log(f"note: --subnet {net} overlaps {u} of another vcluster run "
                    "(harmless: every run has its own isolated namespaces)")
        return net
    if nnodes > 253:
        raise VClusterError("more than 253 nodes need an explicit larger --subnet")
    subnets = list(DEFAULT_POOL.subnets(new_prefix=24))
    start = sum(prefix.encode()) * 7919 % len(subnets)
    for k in range(len(subnets)):
        net = subnets[(start + k) % len(subnets)]
        if not any(net.overlaps(u) for u in used):
            return net
    raise VClusterError(f"no free /24 left in {DEFAULT_POOL}; run `{PROG} --cleanup-stale` or pass --subnet")


def teardown_state(state, verbose=True):
    """Remove everything a run created.  Idempotent; never raises."""
    prefix = state["prefix"]
    names = list(state.get("namespaces") or [])
    existing = set(netns_list())
    # also catch namespaces created before the state was updated
    for ns in existing:
        if ns.startswith(prefix + "-") and re.fullmatch(re.escape(prefix) + r"-(sw|n\d+)", ns):
            if ns not in names:
                names.append(ns)
    if verbose:
        log(f"tearing down {prefix} ({len([n for n in names if n in existing])} namespaces)")
    # 1. processes still living in our namespaces (stragglers, prted daemons, the delay line, ...);
    #    repeat because a dying parent may have started new children meanwhile
    for _ in range(5):
        pids = sorted({pid for ns in names if ns in existing for pid in netns_pids(ns)})
        if not pids:
            break
        kill_pids(pids)
    # 2. namespaces (deleting a namespace destroys its veth ends and therefore the peers too)
    for ns in names:
        if ns in existing:
            p = run(["ip", "netns", "del", ns], check=False)
            if p.returncode != 0:
                log(f"warning: could not delete namespace {ns}: {p.stderr.strip()}")
    # 3. /etc/netns/<ns> directories
    for ns in names:
        d = os.path.join(NETNS_ETC, ns)
        if os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)
    try:
        os.rmdir(NETNS_ETC)          # only succeeds when empty (nobody else uses it)
    except OSError:
        pass
    # 4. state directory
    shutil.rmtree(run_dir(prefix), ignore_errors=True)
    left = [ns for ns in names if ns in set(netns_list())]
    if left:
        log(f"warning: namespaces still present after teardown: {' '.join(left)}")
        return False
    return True


def _recorded_run_alive(st):
    return st.get("pid") and pid_alive(st["pid"], st.get("starttime"))


def cmd_list():
    """--list: the recorded runs (running / kept / STALE) and namespaces no run records (ORPHAN)."""
    states = load_states() if os.path.isdir(STATE_ROOT) else []
    existing = netns_list()
    known = set()
    if not states:
        print("no vcluster runs recorded in " + STATE_ROOT)
    for st in states:
        alive = _recorded_run_alive(st)
        known.update(st.get("namespaces") or [])
        status = "running" if alive else ("kept" if st.get("keep") else "STALE")
        age = time.time() - st.get("created", time.time())
        print(f"{st['prefix']:<22} {status:<8} pid {st.get('pid')}  subnet {st.get('subnet')}  "
              f"nodes {len(st.get('nodes') or [])}  delay-mode {st.get('delay_mode')}  age {age:.0f}s")
    orphans = [ns for ns in existing if re.fullmatch(r"[a-z][a-z0-9]*-(sw|n\d+)", ns) and ns not in known]
    for ns in orphans:
        print(f"{ns:<22} ORPHAN   network namespace without a vcluster state file")
    return 0


def cmd_cleanup(prefixes, stale, include_kept):
    """--cleanup PREFIX... and --cleanup-stale [--include-kept]; exit status 1 if anything was left."""
    with StateLock():
        states = load_states()
    todo = []
    for st in states:
        alive = _recorded_run_alive(st)
        if prefixes and st["prefix"] in prefixes:
            if alive:
                log(f"warning: {st['prefix']} belongs to running pid {st['pid']}; removing it anyway")
            todo.append(st)
        elif stale and not alive and (include_kept or not st.get("keep")):
            todo.append(st)
    known = {ns for st in states for ns in (st.get("namespaces") or [])}
    found = {st["prefix"] for st in todo}
    for p in prefixes:
        if p not in found:
            todo.append({"prefix": p, "namespaces": []})
    if stale:
        # orphans of the default naming scheme vc<pid>x<hex>: remove when that pid is gone
        for ns in netns_list():
            m = re.fullmatch(r"(vc(\d+)x[0-9a-f]+)-(sw|n\d+)", ns)
            if m and ns not in known and not process_exists(int(m.group(2))) and m.group(1) not in found:
                found.add(m.group(1))
                todo.append({"prefix": m.group(1), "namespaces": []})
    if not todo:
        log("nothing to clean up")
    ok = True
    for st in todo:
        ok &= teardown_state(st)
    return 0 if ok else 1
