"""Tests of launch/vcluster, the virtual cluster (network + UTS namespaces, tc-shaped links), and of its
package launch/vclusterlib (the functions tested without namespaces).

They need root, iproute2 (ip, tc) and util-linux (unshare) and are skipped otherwise.  Every run uses its
own prefix, so they may run next to other vcluster users; each test checks that nothing is left behind.
"""
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

import _launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VC = os.path.join(ROOT, "launch", "vcluster")
PROGS = os.path.join(ROOT, "tests", "vcluster_progs")
PY = sys.executable

vcl = _launch.needs_vcluster          # marks a test that builds a virtual cluster


_counter = [0]


def new_prefix(tag):
    _counter[0] += 1
    return f"t{os.getpid() % 100000}{tag}{_counter[0]}"[:20]


def vc(args, command=None, timeout=120, prefix=None, check_clean=True, env=None):
    """Run vcluster; return CompletedProcess.  Always checks that the run left nothing behind."""
    argv = [PY, VC] + (["--prefix", prefix] if prefix else []) + list(args)
    if command is not None:
        argv += ["--"] + list(command)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout, env=env)
    if check_clean and prefix:
        assert_clean(prefix)
    return p


def leftovers(prefix):
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    left = [line.split()[0] for line in out.splitlines() if line.startswith(prefix + "-")]
    if os.path.isdir("/etc/netns"):
        left += [f"/etc/netns/{d}" for d in os.listdir("/etc/netns") if d.startswith(prefix + "-")]
    if os.path.isdir(f"/run/vcluster/{prefix}"):
        left.append(f"/run/vcluster/{prefix}")
    return left


def assert_clean(prefix):
    left = leftovers(prefix)
    assert not left, f"vcluster left these behind: {left}"


def results(stdout):
    return [json.loads(m.group(1)) for m in re.finditer(r"RESULT (\{.*\})", stdout)]


def explain(p):
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}"


# ------------------------------------------------------------------------------------------------------
# option parsing (no namespaces)


def _lib(module):
    """launch/vclusterlib.<module>, imported the way launch/vcluster finds it (launch/ on sys.path)."""
    launch = os.path.dirname(VC)
    if launch not in sys.path:
        sys.path.insert(0, launch)
    return importlib.import_module(f"vclusterlib.{module}")


def test_units_and_help():
    m = _lib("units")
    assert m.parse_rate("1gbit") == 10 ** 9
    assert m.parse_rate("50mbit") == 50 * 10 ** 6
    assert m.parse_rate("100kbit") == 10 ** 5
    assert m.parse_rate("1mbps") == 8 * 10 ** 6
    assert m.parse_delay_us("100us") == 100
    assert m.parse_delay_us("5ms") == 5000
    assert m.parse_delay_us("0") == 0
    p = subprocess.run([PY, VC, "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "--launcher" in p.stdout and "example" in p.stdout
    p = subprocess.run([PY, VC, "--nodes", "2", "--launcher", "srun", "--", "true"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "unknown launcher" in p.stderr


# ------------------------------------------------------------------------------------------------------
# launcher none: hostnames, addresses, TCP between nodes, cleanup


@vcl
def test_none_hostnames_addresses_tcp():
    prefix = new_prefix("e")
    p = vc(["--nodes", "2", "--timeout", "60"], [PY, os.path.join(PROGS, "netprobe.py"), "echo"],
           prefix=prefix)
    assert p.returncode == 0, explain(p)
    res = {r["node"]: r for r in results(p.stdout)}
    assert set(res) == {0, 1}, explain(p)
    for i in (0, 1):
        assert res[i]["hostname"] == f"{prefix}-n{i}"                # own UTS namespace
        assert res[i]["resolved"] == res[i]["addr"]                  # hostname resolves to own address
    assert res[0]["addr"] != res[1]["addr"]
    assert res[1]["local_addr"] == res[1]["addr"]                    # connected from its own eth0
    assert res[1]["resolved_n0"] == res[0]["addr"]                   # other nodes' names resolve
    assert res[1]["reply"] == f"echo:{prefix}-n1@{res[1]['addr']}"  # TCP both ways
    assert res[0]["peers"][0]["peer_addr"] == res[1]["addr"]
    assert "[n0] " in p.stdout and "[n1] " in p.stdout
    assert "tearing down" in p.stderr


@vcl
def test_env_and_tc_config_both_sides():
    prefix = new_prefix("c")
    script = ('echo "ENV $VCLUSTER_NODE_RANK $VCLUSTER_NNODES $MULTIWRITE_VCLUSTER_RATE '
              '$MULTIWRITE_VCLUSTER_DELAY_US $VCLUSTER_MASTER_ADDR $VCLUSTER_NODE_ADDRS"; '
              'tc qdisc show dev eth0; tc class show dev eth0; '
              'ip netns exec "$VCLUSTER_PREFIX-sw" tc class show dev "p$VCLUSTER_NODE_RANK"')
    p = vc(["--nodes", "2", "--rate", "50mbit", "--delay", "1ms", "--timeout", "60"], ["sh", "-c", script],
           prefix=prefix)
    assert p.returncode == 0, explain(p)
    env = {}
    for m in re.finditer(r"\[n(\d)\] ENV (\S+) (\S+) (\S+) (\S+) (\S+) (\S+)", p.stdout):
        env[int(m.group(1))] = m.groups()[1:]
    assert set(env) == {0, 1}, explain(p)
    addrs = env[0][5].split(",")
    for i in (0, 1):
        assert env[i][:4] == (str(i), "2", "50000000", "1000")
        assert env[i][4] == addrs[0]
    for i in (0, 1):
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith(f"[n{i}] class htb")]
        assert len(lines) == 2 and all("rate 50Mbit" in ln for ln in lines), explain(p)   # node + switch


def test_failure_hints():
    """A failed ip/tc command on a host without a kernel feature or privilege says what to do."""
    m = _lib("processes")
    hint = m.failure_hint(["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb"],
                          "Error: Specified qdisc kind is unknown.")
    assert "modprobe sch_htb" in hint
    assert "modprobe veth" in m.failure_hint(["ip", "link", "add", "x", "type", "veth"],
                                             "Error: Unknown device type.")
    assert "CAP_SYS_ADMIN" in m.failure_hint(["ip", "netns", "add", "x"],
                                             "mount --make-shared /run/netns failed: Operation not permitted")
    assert m.failure_hint(["ip", "link", "set", "x", "up"], "Cannot find device") is None


def test_tcp_congestion_choice():
    """The choice logic on made-up kernels: auto prefers cubic, falls back to reno, then to the
    namespace's own; a name is checked against what a namespace may select, not what the kernel has."""
    m = _lib("tcp_congestion")
    choose = m.choose_tcp_cc
    assert choose("auto", ["reno", "cubic", "bbr"], ["reno", "cubic", "bbr"], "bbr") == ("cubic", None)
    name, note = choose("auto", ["reno", "bbr"], ["reno", "bbr", "cubic"], "bbr")
    assert name == "reno" and "cubic not allowed" in note and "allowed: reno bbr" in note
    name, note = choose("auto", ["bbr"], ["bbr", "cubic"], "bbr")
    assert name == "bbr" and "kept the namespace's own" in note
    assert choose("inherit", ["reno"], ["reno", "cubic"], "bbr") == ("bbr", "inherited")
    assert choose("bbr", ["reno", "bbr"], ["reno", "bbr", "cubic"], "reno") == ("bbr", None)
    with pytest.raises(_lib("common").VClusterError) as e:
        choose("cubic", ["reno", "bbr"], ["reno", "bbr", "cubic"], "bbr")
    msg = str(e.value)
    assert "may not select it" in msg and "allowed: reno bbr" in msg and "available: reno bbr cubic" in msg
    assert "tcp_allowed_congestion_control='reno bbr cubic'" in msg
    with pytest.raises(_lib("common").VClusterError) as e:
        choose("nosuchcc", ["reno"], ["reno", "cubic"], "reno")
    assert "no such congestion control" in str(e.value) and "available: reno cubic" in str(e.value)


def _namespace_tcp_lists():
    """(allowed, available) as a new network namespace reads them (the kernel's real answer)."""
    ns = f"t{os.getpid() % 100000}cc"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                              "cat /proc/sys/net/ipv4/tcp_allowed_congestion_control "
                              "/proc/sys/net/ipv4/tcp_available_congestion_control"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.splitlines()
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=20)
    return out[0].split(), out[1].split()


@vcl
def test_tcp_congestion_control_set_in_every_node():
    """What the nodes get follows what this kernel lets a namespace select: auto is the first allowed of
    cubic, reno; every allowed name asked for reaches every node and the command's environment; an
    available-but-refused name and an unknown name are errors that say which (nothing left behind)."""
    allowed, available = _namespace_tcp_lists()
    assert "reno" in allowed, (allowed, available)        # reno is built in and never restricted
    auto = next(n for n in ("cubic", "reno") if n in allowed)
    script = 'echo "CC $(cat /proc/sys/net/ipv4/tcp_congestion_control) $MULTIWRITE_VCLUSTER_TCP_CC"'
    cases = [([], auto), (["--tcp-congestion", "auto"], auto)]
    cases += [(["--tcp-congestion", name], name) for name in allowed[:3]]
    for flag, want in cases:
        p = vc(["--nodes", "2", "--timeout", "60"] + flag, ["sh", "-c", script], prefix=new_prefix("t"))
        assert p.returncode == 0, explain(p)
        for i in (0, 1):
            assert f"[n{i}] CC {want} {want}" in p.stdout, explain(p)
        assert f"TCP congestion control {want}" in p.stderr, explain(p)
    refused = [n for n in available if n not in allowed]
    for name in refused[:1]:          # only on kernels that restrict namespaces (e.g. cubic not allowed)
        p = vc(["--nodes", "2", "--timeout", "60", "--tcp-congestion", name], ["true"], prefix=new_prefix("t"))
        assert p.returncode != 0 and "may not select it" in p.stderr, explain(p)
        assert f"allowed: {' '.join(allowed)}" in p.stderr, explain(p)
    p = vc(["--nodes", "2", "--timeout", "60", "--tcp-congestion", "nosuchcc"], ["true"], prefix=new_prefix("t"))
    assert p.returncode != 0 and "--tcp-congestion nosuchcc: the kernel has no such" in p.stderr, explain(p)


# ------------------------------------------------------------------------------------------------------
# shaping


@vcl
def test_rate_shaped_both_directions():
    prefix = new_prefix("r")
    nbytes = 2_500_000            # 2.5 MB at 50 Mbit/s: 0.4 s of payload alone
    p = vc(["--nodes", "2", "--rate", "50mbit", "--delay", "100us", "--timeout", "60"],
           [PY, os.path.join(PROGS, "netprobe.py"), "bulk", str(nbytes)], prefix=prefix)
    assert p.returncode == 0, explain(p)
    res = {r["direction"]: r for r in results(p.stdout)}
    assert set(res) == {"0->1", "1->0"}, explain(p)
    for d, r in res.items():
        assert r["seconds"] >= 0.3, f"{d}: {r} is faster than a 50 Mbit/s link"


@vcl
def test_switch_side_shaped_incast():
    """Two senders into one node: only the switch-side egress of node 0's link limits them."""
    prefix = new_prefix("i")
    p = vc(["--nodes", "3", "--rate", "50mbit", "--delay", "100us", "--timeout", "60"],
           [PY, os.path.join(PROGS, "netprobe.py"), "incast", "1250000"], prefix=prefix)
    assert p.returncode == 0, explain(p)
    (r,) = results(p.stdout)
    assert r["senders"] == 2 and r["seconds"] >= 0.3, r


def _delay_line_used(p):
    """Which user-space delay line a run used ("c" / "python"), None without one (netem)."""
    m = re.search(r"vcluster: delay line: (c|python)\b", p.stderr)
    return m.group(1) if m else None


_has_cc = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


@vcl
@pytest.mark.parametrize("line", ["c", "python"])
def test_delay_rtt(line):
    if line == "c" and not _has_cc:
        pytest.skip("no C compiler for launch/delayline.c")
    prefix = new_prefix("d")
    p = vc(["--nodes", "2", "--delay", "5ms", "--delay-line", line, "--timeout", "60"],
           [PY, os.path.join(PROGS, "netprobe.py"), "rtt", "10"], prefix=prefix)
    assert p.returncode == 0, explain(p)
    (r,) = results(p.stdout)
    assert r["min_us"] >= 10_000, r
    # documented semantics: 5 ms per link and direction, two links per path -> RTT >= 4 * 5 ms
    assert r["min_us"] >= 19_500, r
    assert r["median_us"] < 30_000, r          # and not much more (the line holds, it does not stall)
    if _delay_line_used(p) is not None:       # a kernel with netem needs no delay line
        assert _delay_line_used(p) == line, explain(p)
        # its teardown report: every frame forwarded, none dropped, its own CPU time
        m = re.search(r"delay line: forwarded (\d+) frames .* dropped (\d+) .* \+ (\d+) \(socket buffer\); "
                      r"CPU [0-9.]+ s user", p.stderr)
        assert m and int(m.group(1)) >= 20 and m.group(2) == "0" and m.group(3) == "0", explain(p)


@vcl
@pytest.mark.skipif(not _has_cc, reason="no C compiler for launch/delayline.c")
def test_c_delay_line_carries_bulk_at_the_shaped_rate():
    """The C delay line forwards GSO super-packets intact: 4 MB each way arrive, no faster than the
    shaped 50 Mbit/s and without drops; auto picks it when a compiler is there."""
    prefix = new_prefix("cb")
    p = vc(["--nodes", "2", "--rate", "50mbit", "--delay", "200us", "--timeout", "60"],
           [PY, os.path.join(PROGS, "netprobe.py"), "bulk", "4000000"], prefix=prefix)
    assert p.returncode == 0, explain(p)
    if _delay_line_used(p) is None:
        pytest.skip("this kernel has sch_netem: no user-space delay line")
    assert _delay_line_used(p) == "c", explain(p)
    res = {r["direction"]: r for r in results(p.stdout)}
    assert set(res) == {"0->1", "1->0"}, explain(p)
    for d, r in res.items():
        assert 0.55 <= r["seconds"] < 5, f"{d}: {r} (4 MB at 50 Mbit/s take >= 0.64 s)"
    m = re.search(r"dropped (\d+) \(queue full or send error\) \+ (\d+)", p.stderr)
    assert m and m.groups() == ("0", "0"), explain(p)


def test_delay_line_c_build_error_is_clear(tmp_path, monkeypatch):
    """--delay-line c without a working compiler is an error that says why (auto falls back)."""
    m = _lib("delayline")
    monkeypatch.setattr(m, "BIN_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(m.shutil, "which", lambda name: None)
    with pytest.raises(Exception) as e:
        m.delayline_program("c")
    assert "--delay-line c" in str(e.value)
    assert m.delayline_program("auto") is None and m.delayline_program("python") is None


@vcl
def test_delay_mode_netem_or_clear_error():
    """--delay-mode netem uses the kernel's sch_netem; on a kernel without it vcluster says so."""
    prefix = new_prefix("n")
    p = vc(["--nodes", "2", "--delay", "2ms", "--delay-mode", "netem", "--timeout", "60"],
           [PY, os.path.join(PROGS, "netprobe.py"), "rtt", "5"], prefix=prefix)
    if p.returncode == 1 and "no sch_netem" in p.stderr:
        return                                       # this kernel lacks CONFIG_NET_SCH_NETEM
    assert p.returncode == 0, explain(p)
    (r,) = results(p.stdout)
    assert r["min_us"] >= 7_800, r


# ------------------------------------------------------------------------------------------------------
# launchers


@vcl
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_torchrun_2x2():
    prefix = new_prefix("t")
    p = vc(["--nodes", "2", "--ranks-per-node", "2", "--launcher", "torchrun", "--timeout", "150"],
           [os.path.join(PROGS, "torch_allgather.py")], prefix=prefix, timeout=180)
    assert p.returncode == 0, explain(p)
    (r,) = results(p.stdout)
    assert r["size"] == 4 and r["ranks"] == [0, 1, 2, 3]
    assert r["hosts"] == [f"{prefix}-n0", f"{prefix}-n1"]
    assert len(r["netns"]) == 2 and r["tensors_ok"]
    assert r["rates"] == ["1000000000"] and r["delays_us"] == ["100"]     # every rank got the env
    assert r["node_ranks"] == ["0", "0", "1", "1"]
    assert r["host_of_rank"] == [f"{prefix}-n0"] * 2 + [f"{prefix}-n1"] * 2


@vcl
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not on PATH")
def test_mpirun_2x2():
    pytest.importorskip("mpi4py")
    prefix = new_prefix("m")
    p = vc(["--nodes", "2", "--ranks-per-node", "2", "--launcher", "mpirun", "--timeout", "120"],
           [PY, os.path.join(PROGS, "mpi_allgather.py")], prefix=prefix, timeout=150)
    assert p.returncode == 0, explain(p)
    (r,) = results(p.stdout)
    assert r["size"] == 4 and r["ranks"] == [0, 1, 2, 3]
    assert r["hosts"] == [f"{prefix}-n0", f"{prefix}-n1"]
    assert len(r["netns"]) == 2 and r["blobs_ok"] and r["sum"] == 6
    assert r["rates"] == ["1000000000"] and r["delays_us"] == ["100"]     # every rank got the env
    assert r["node_ranks"] == ["0", "0", "1", "1"]
    assert r["host_of_rank"] == [f"{prefix}-n0"] * 2 + [f"{prefix}-n1"] * 2
    assert "[mpirun] [1,0]<stdout>" in p.stdout, explain(p)


# ------------------------------------------------------------------------------------------------------
# failure paths


@vcl
def test_exit_code_of_failing_node():
    prefix = new_prefix("x")
    t0 = time.monotonic()
    p = vc(["--nodes", "2", "--grace", "1", "--timeout", "60"],
           ["sh", "-c", 'if [ "$VCLUSTER_NODE_RANK" = 1 ]; then exit 3; fi; exec sleep 100'], prefix=prefix)
    assert p.returncode == 3, explain(p)
    assert time.monotonic() - t0 < 30


@vcl
def test_timeout_kills_and_exits_124():
    prefix = new_prefix("o")
    t0 = time.monotonic()
    p = vc(["--nodes", "2", "--timeout", "2"], ["sleep", "100"], prefix=prefix)
    assert p.returncode == 124, explain(p)
    assert "timeout" in p.stderr
    assert time.monotonic() - t0 < 20


def _procs_with(marker):
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(marker.encode()):
                        found.append(int(pid))
            except OSError:
                pass
    return found


@vcl
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_tears_down(sig):
    prefix = new_prefix("s")
    marker = f"99.{os.getpid()}{_counter[0]}"              # a unique `sleep` argument to find stragglers
    proc = subprocess.Popen([PY, VC, "--prefix", prefix, "--nodes", "2", "--", "sleep", marker],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_procs_with("sleep\0" + marker)) < 2:
            time.sleep(0.1)
        assert len(_procs_with("sleep\0" + marker)) == 2, "the nodes did not start"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
            subprocess.run([PY, VC, "--cleanup", prefix], capture_output=True, timeout=60)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {sig.name}".encode() in err and b"tearing down" in err
    assert_clean(prefix)
    assert _procs_with("sleep\0" + marker) == []


@vcl
def test_stale_cleanup_after_sigkill():
    """A vcluster killed with SIGKILL cannot clean up: --list shows it, --cleanup-stale removes it."""
    prefix = new_prefix("k")
    proc = subprocess.Popen([PY, VC, "--prefix", prefix, "--nodes", "2", "--", "sleep", "100"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(f"/run/vcluster/{prefix}/state.json") and \
                    len([x for x in leftovers(prefix) if not x.startswith("/")]) == 3:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        proc.kill()
        proc.wait(timeout=10)
        p = subprocess.run([PY, VC, "--list"], capture_output=True, text=True, timeout=30)
        assert re.search(rf"^{prefix}\s+STALE", p.stdout, re.M), p.stdout
        p = subprocess.run([PY, VC, "--cleanup-stale"], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    finally:
        subprocess.run([PY, VC, "--cleanup", prefix], capture_output=True, timeout=60)
    assert_clean(prefix)


@vcl
def test_keep_then_cleanup():
    prefix = new_prefix("p")
    try:
        p = vc(["--nodes", "2", "--keep"], ["true"], prefix=prefix, check_clean=False)
        assert p.returncode == 0, explain(p)
        assert f"--cleanup {prefix}" in p.stderr
        assert len([x for x in leftovers(prefix) if not x.startswith("/")]) == 3
        # the kept cluster works: node 1 reaches node 0 over the shaped network
        with open(f"/run/vcluster/{prefix}/state.json") as f:
            addr0 = json.load(f)["addrs"][0]
        out = subprocess.run(["ip", "netns", "exec", f"{prefix}-n1", PY, "-c",
                              "import socket; s=socket.socket(); s.settimeout(5)\n"
                              f"try: s.connect(({addr0!r}, 9))\n"
                              "except ConnectionRefusedError: print('refused')"],
                             capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "refused", out      # an RST from node 0: the path works
        p = subprocess.run([PY, VC, "--cleanup", prefix], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    finally:
        subprocess.run([PY, VC, "--cleanup", prefix], capture_output=True, timeout=60)
    assert_clean(prefix)


def _unprivileged_runner():
    py = None
    for cand in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if cand and os.path.exists(cand):
            for wrap in (["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
                         ["runuser", "-u", "nobody", "--"]):
                if shutil.which(wrap[0]) is None:
                    continue
                try:
                    ok = subprocess.run(wrap + [cand, "-c", f"open({VC!r}).read(1)"],
                                        capture_output=True, timeout=30).returncode == 0
                except (OSError, subprocess.TimeoutExpired):
                    ok = False
                if ok:
                    return wrap, cand
    return None, py


def test_not_root_error_message():
    wrap, py = ([], sys.executable) if os.geteuid() != 0 else _unprivileged_runner()
    if wrap is None:
        pytest.skip("cannot run a python that can read launch/vcluster as an unprivileged user "
                    "(needs setpriv or runuser and a world-readable interpreter)")
    p = subprocess.run(wrap + [py, VC, "--nodes", "2", "--", "true"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode != 0
    assert "vcluster needs root (network namespaces): run as root or with sudo" in p.stderr, p.stderr
