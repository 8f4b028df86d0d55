# SPDX-License-Identifier: MIT
"""The user-space delay line, the fallback when the kernel has no sch_netem: the Python line itself
(run as ``launch/vcluster --_delayline ...`` in the switch namespace), the build of the C line
(launch/delayline.c, once per source version), and starting, waiting for and stopping either one."""

import ctypes
import hashlib
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque

from .common import COMMAND, LAUNCH_DIR, VClusterError, log

BIN_DIR = "/run/vcluster-bin"         # the C delay line, built once per source version (tmpfs too)
DELAYLINE_SOURCE = os.path.join(LAUNCH_DIR, "delayline.c")
READY_TIMEOUT = 15                    # seconds for a started delay line to say "ready"

PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
SOL_PACKET = 263
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
SO_TIMESTAMPNS = 35


def delayline_main(argv):
    """Forward every frame received on IN to OUT after a fixed delay.  Runs inside the switch namespace.

    argv: delay_us queue_bytes IN:OUT [IN:OUT ...].  Uses PACKET_VNET_HDR so that GSO super-packets
    (up to 64 KiB) pass as one frame, which keeps the per-packet cost of Python low at Gbit/s rates.
    A constant delay keeps FIFO order, so one deque ordered by arrival time serves all ports.
    """
    delay = int(argv[0]) / 1e6
    qlimit = int(argv[1])
    pairs = [a.split(":") for a in argv[2:]]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1000, 0, 0, 0)            # PR_SET_TIMERSLACK = 1us: precise short sleeps
    except Exception:
        pass
    stats = [0, 0, 0]                # frames forwarded, bytes forwarded, frames dropped

    def on_term(*_):
        kdrops = 0
        for rx, _tx in rx_of.values():
            try:                     # PACKET_STATISTICS: frames the kernel dropped (receive buffer full)
                kdrops += struct.unpack("II", rx.getsockopt(SOL_PACKET, 6, 8))[1]
            except OSError:
                pass
        cpu = os.times()
        sys.stderr.write(f"delay line: forwarded {stats[0]} frames ({stats[1]} bytes), dropped {stats[2]} "
                         f"(queue full or send error) + {kdrops} (socket buffer); CPU {cpu.user:.2f} s user + "
                         f"{cpu.system:.2f} s system\n")
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides when we stop
    rx_of = {}
    for i_if, o_if in pairs:
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        try:
            rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError:
            pass
        try:
            rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        except OSError:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        rx.bind((i_if, ETH_P_ALL))
        rx.setblocking(False)
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        tx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        try:
            tx.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 64 << 20)
        except OSError:
            pass
        tx.bind((o_if, 0))
        rx_of[rx.fileno()] = (rx, tx)
    rxs = [v[0] for v in rx_of.values()]
    q = deque()
    qbytes = 0
    buf = bytearray(1 << 18)
    mv = memoryview(buf)
    bufs = [mv]
    anc = socket.CMSG_SPACE(16)
    unpack_ts = struct.Struct("qq").unpack_from
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # Clock: CLOCK_REALTIME, because the kernel's receive timestamps (SO_TIMESTAMPNS) are in it; the
    # due time counts from when the frame reached the switch port, not from when we woke up.
    now_f = time.time
    sel = select.select
    early = 60e-6      # wake up this much before a frame is due and spin: timer wake-ups are late
    while True:
        if q:
            timeout = q[0][0] - now_f() - early
            if timeout < 0:
                timeout = 0
        else:
            timeout = None
        readable, _, _ = sel(rxs, (), (), timeout)
        if readable:
            now = now_f()
            for rx in readable:
                tx = rx_of[rx.fileno()][1]
                while True:
                    try:
                        n, ancdata, _, _ = rx.recvmsg_into(bufs, anc)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break
                    t = now
                    if ancdata:
                        sec, nsec = unpack_ts(ancdata[0][2])
                        t = sec + nsec * 1e-9
                        if not now - 1.0 < t <= now:
                            t = now
                    if qbytes + n > qlimit:
                        stats[2] += 1
                        continue
                    q.append((t + delay, tx, bytes(mv[:n])))
                    qbytes += n
        if q:
            now = now_f()
            if not readable and q[0][0] - now < early:
                while now < q[0][0]:
                    now = now_f()
            while q and q[0][0] <= now:
                _, tx, frame = q.popleft()
                qbytes -= len(frame)
                try:
                    tx.send(frame)
                    stats[0] += 1
                    stats[1] += len(frame)
                except OSError:
                    stats[2] += 1


def delayline_program(choice):
    """argv prefix of the C delay line (launch/delayline.c, built once per source version into
    BIN_DIR with the host's C compiler), or None for the Python one (``choice`` "python", or
    "auto" without a compiler).  ``choice`` "c" makes a failed build an error."""
    if choice == "python":
        return None
    try:
        with open(DELAYLINE_SOURCE, "rb") as f:
            source = f.read()
    except OSError as e:
        if choice == "c":
            raise VClusterError(f"--delay-line c: cannot read {DELAYLINE_SOURCE}: {e}")
        return None
    binary = os.path.join(BIN_DIR, "delayline-" + hashlib.sha256(source).hexdigest()[:16])
    if not os.access(binary, os.X_OK):
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        err = "no C compiler (cc, gcc or clang) on PATH"
        if cc:
            os.makedirs(os.path.dirname(binary), exist_ok=True)
            tmp = f"{binary}.{os.getpid()}.tmp"
            try:
                p = subprocess.run([cc, "-O2", "-o", tmp, DELAYLINE_SOURCE], capture_output=True, text=True,
                                   timeout=120)
                err = None if p.returncode == 0 else f"{cc} failed: {p.stderr.strip()[-500:]}"
            except (OSError, subprocess.TimeoutExpired) as e:
                err = f"{cc}: {e}"
            if err is None:
                os.replace(tmp, binary)          # atomic: concurrent runs never see half a binary
            else:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
        if err:
            if choice == "c":
                raise VClusterError(f"--delay-line c: cannot build {DELAYLINE_SOURCE}: {err}")
            return None
    return [binary]


def spawn(program, switch_ns, delay_us, queue_limit, pairs, log_path):
    """Start a delay line in ``switch_ns`` (its own session; stderr to ``log_path``): ``program`` from
    delayline_program, None for the Python one; it holds every frame of each IN:OUT pair for
    ``delay_us``.  Returns the Popen; wait_until_ready says whether it runs."""
    program = program or [sys.executable, COMMAND, "--_delayline"]
    argv = ["ip", "netns", "exec", switch_ns] + program + [str(delay_us), str(queue_limit)] + pairs
    with open(log_path, "wb") as logf:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                                start_new_session=True)


def _read_log(log_path):
    try:
        with open(log_path) as f:
            return f.read()
    except OSError:
        return ""


def wait_until_ready(proc, log_path):
    """Wait for the line's "ready"; raise VClusterError with its log if it does not come."""
    r, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline() if r else b""
    if line.strip() != b"ready":
        err = _read_log(log_path).strip()
        raise VClusterError(f"the user-space delay line did not start: {err or 'no output'}")


def stop(proc, log_path):
    """SIGTERM the delay line (its whole session), wait for it and log its report (frames, drops, CPU)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=3)
        with open(log_path) as f:
            for line in f.read().splitlines():
                if line.strip():
                    log(line.strip())
    except (subprocess.TimeoutExpired, OSError):
        pass
