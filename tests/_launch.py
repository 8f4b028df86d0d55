"""Launch a test program on several local processes with mpirun or torchrun, with a hard timeout.

Used by the multi-process tests: each returns (returncode, combined output); a run that exceeds its
timeout is killed (whole process group) and reported as a failure, so a hang can never stall CI.
"""
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAUNCHERS = ("mpirun", "torchrun")


#: Set by .ci/run on root machines: a virtual-cluster test that cannot run there fails instead of skipping.
REQUIRE_VCLUSTER = os.environ.get("MULTIWRITE_TESTS_REQUIRE_VCLUSTER") == "1"


@functools.lru_cache(maxsize=None)
def vcluster_unavailable():
    """Why this machine cannot build a virtual cluster (launch/vcluster), or None when it can: root,
    iproute2 and util-linux, and a network namespace that can really be created (root inside a
    container without CAP_SYS_ADMIN cannot)."""
    if os.geteuid() != 0:
        return "the virtual cluster needs root (network namespaces): run as root"
    missing = [t for t in ("ip", "tc", "unshare") if shutil.which(t) is None
               and not any(os.access(os.path.join(d, t), os.X_OK) for d in ("/usr/sbin", "/sbin", "/usr/bin"))]
    if missing:
        return f"the virtual cluster needs {' '.join(missing)} (apt-get install -y iproute2 util-linux)"
    probe = f"mwprobe{os.getpid()}"
    try:
        p = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
        if p.returncode != 0:
            return f"this machine does not let root create network namespaces: {p.stderr.strip()}"
        p = subprocess.run(["ip", "netns", "exec", probe, "unshare", "--uts", "true"], capture_output=True,
                           text=True, timeout=20)
        if p.returncode != 0:
            return f"this machine does not let root create UTS namespaces: {p.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None


def needs_vcluster(test):
    """Decorator: skip ``test`` with the reason when no virtual cluster can be built here; under
    MULTIWRITE_TESTS_REQUIRE_VCLUSTER=1 (CI on root machines) fail with it instead."""
    import pytest
    reason = vcluster_unavailable()
    if reason is None:
        return test
    if not REQUIRE_VCLUSTER:
        return pytest.mark.skip(reason=reason)(test)

    @functools.wraps(test)
    def fail(*args, **kwargs):
        pytest.fail(f"MULTIWRITE_TESTS_REQUIRE_VCLUSTER=1 but no virtual cluster here: {reason}")
    return fail


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have(launcher):
    return shutil.which(launcher) is not None


def command(launcher, nprocs, script, args=()):
    script = os.path.join(HERE, "mp", script) if not os.path.isabs(script) else script
    if launcher == "mpirun":
        cmd = ["mpirun", "-n", str(nprocs), "--oversubscribe", "--bind-to", "none",
               "--mca", "btl", "self,tcp", "--mca", "btl_tcp_if_include", "lo",
               ]
        if os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        return cmd + [sys.executable, script, *args]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nprocs),
                "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                "--max-restarts", "0", "--monitor-interval", "0.2", script, *args]
    raise ValueError(launcher)


def run(launcher, nprocs, script, args=(), env=None, timeout=180):
    """Run ``script`` (in tests/mp/) on ``nprocs`` ranks; returns (returncode, output)."""
    code, out, _ = run_command(command(launcher, nprocs, script, args), env, timeout)
    return code, out


def run_command(cmd, env=None, timeout=180):
    """Run a launcher command from the repository root with a clean multiwrite environment (this
    checkout first on PYTHONPATH, MULTIWRITE_TIMEOUT 60 unless set, no inherited node/mode/transport
    settings) plus ``env``. Returns (returncode, output, seconds); a run that exceeds ``timeout`` is
    killed with its whole process group and reported as returncode -999."""
    import time
    full_env = dict(os.environ)
    full_env.setdefault("MULTIWRITE_TIMEOUT", "60")
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env["OMP_NUM_THREADS"] = "1"
    for k in ("MULTIWRITE_RANKS_PER_NODE", "MULTIWRITE_MODE", "MULTIWRITE_TRANSPORT", "MULTIWRITE_RACK", "MULTIWRITE_TOPOLOGY",
              "MULTIWRITE_DECODE_TOKENS"):
        full_env.pop(k, None)
    full_env.update({k: str(v) for k, v in (env or {}).items()})
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
                            start_new_session=True, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return -999, f"TIMEOUT after {timeout}s\n{out}", time.monotonic() - t0
    return proc.returncode, out, time.monotonic() - t0


def check(launcher, nprocs, script, args=(), env=None, timeout=180):
    code, out = run(launcher, nprocs, script, args, env, timeout)
    assert code == 0, f"{launcher} -n {nprocs} {script} {' '.join(args)} exited {code}:\n{out[-6000:]}"
    return out
