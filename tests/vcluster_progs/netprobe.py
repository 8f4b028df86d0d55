"""Network probe for the vcluster tests; run once per node with `vcluster --launcher none`.

usage: netprobe.py echo | bulk NBYTES | rtt COUNT | incast NBYTES
(node 0 is the server, every other node a client; bulk and rtt use nodes 0 and 1 only;
incast: every other node sends NBYTES to node 0 at the same time, node 0 reports the total time)

Prints one JSON line per measurement, prefixed with "RESULT ".  Uses only the standard library.
"""
import json
import os
import socket
import sys
import time

PORT = 24555


def addrs():
    return os.environ["VCLUSTER_NODE_ADDRS"].split(",")


def out(**kw):
    kw.update(node=int(os.environ["VCLUSTER_NODE_RANK"]), hostname=socket.gethostname())
    print("RESULT " + json.dumps(kw), flush=True)


def connect(host, deadline=20.0):
    t_end = time.monotonic() + deadline
    while True:
        try:
            s = socket.create_connection((host, PORT), timeout=5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.monotonic() > t_end:
                raise
            time.sleep(0.05)


def listen(n_clients):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", PORT))
    ls.listen(n_clients)
    ls.settimeout(30)
    return ls


def recv_exact(s, n):
    buf = bytearray(n)
    mv = memoryview(buf)
    got = 0
    while got < n:
        k = s.recv_into(mv[got:], min(n - got, 1 << 20))
        if not k:
            raise EOFError("peer closed")
        got += k
    return bytes(buf)


def recv_count(s, n):
    """receive n bytes, discard; returns when all arrived"""
    buf = bytearray(1 << 20)
    got = 0
    while got < n:
        k = s.recv_into(buf, min(n - got, len(buf)))
        if not k:
            raise EOFError("peer closed")
        got += k


def main():
    mode = sys.argv[1]
    rank = int(os.environ["VCLUSTER_NODE_RANK"])
    nn = int(os.environ["VCLUSTER_NNODES"])
    a = addrs()
    my_addr = a[rank]
    # the address of eth0 as seen by the kernel: the one used to reach node 0
    if mode == "echo":
        if rank == 0:
            ls = listen(nn)
            peers = []
            for _ in range(nn - 1):
                c, peer = ls.accept()
                msg = recv_exact(c, int(recv_exact(c, 4).decode()))
                c.sendall(b"echo:" + msg)
                peers.append({"peer_addr": peer[0], "said": msg.decode()})
                c.close()
            out(mode="echo", addr=my_addr, peers=peers, resolved=socket.gethostbyname(socket.gethostname()))
        else:
            s = connect(os.environ["VCLUSTER_MASTER_ADDR"])
            msg = f"{socket.gethostname()}@{my_addr}".encode()
            s.sendall(b"%04d" % len(msg) + msg)
            reply = s.recv(1000).decode()
            out(mode="echo", addr=my_addr, local_addr=s.getsockname()[0], reply=reply,
                resolved=socket.gethostbyname(socket.gethostname()),
                resolved_n0=socket.gethostbyname(os.environ["VCLUSTER_NODE_NAMES"].split(",")[0]))
    elif mode == "bulk":
        # node 0 -> node 1, then node 1 -> node 0; each timed by the receiver after a 1-byte handshake
        nbytes = int(sys.argv[2])
        payload = os.urandom(1 << 16) * ((1 << 20) >> 16)
        if rank == 0:
            s, _ = listen(1).accept()
        elif rank == 1:
            s = connect(a[0])
        else:
            return
        s.settimeout(60)
        for direction in ("0->1", "1->0"):
            sender = int(direction[0])
            if rank == sender:
                s.sendall(b"G")
                left = nbytes
                while left:
                    k = min(left, len(payload))
                    s.sendall(payload[:k])
                    left -= k
                recv_exact(s, 1)       # ack from receiver after everything arrived
            else:
                recv_exact(s, 1)
                t0 = time.perf_counter()
                recv_count(s, nbytes)
                dt = time.perf_counter() - t0
                s.sendall(b"A")
                out(mode="bulk", direction=direction, nbytes=nbytes, seconds=dt,
                    mbit_per_s=nbytes * 8 / dt / 1e6)
        s.close()
    elif mode == "rtt":
        count = int(sys.argv[2])
        if rank == 0:
            c, _ = listen(1).accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                m = c.recv(64)
                if not m:
                    break
                c.sendall(m)
        elif rank == 1:
            s = connect(a[0])
            rtts = []
            for _ in range(count):
                t0 = time.perf_counter()
                s.sendall(b"p")
                recv_exact(s, 1)
                rtts.append(time.perf_counter() - t0)
            s.close()
            rtts.sort()
            out(mode="rtt", count=count, min_us=rtts[0] * 1e6, median_us=rtts[len(rtts) // 2] * 1e6,
                max_us=rtts[-1] * 1e6)
    elif mode == "incast":
        nbytes = int(sys.argv[2])
        if rank == 0:
            import threading
            ls = listen(nn)
            conns = [ls.accept()[0] for _ in range(nn - 1)]
            threads = [threading.Thread(target=recv_count, args=(c, nbytes)) for c in conns]
            t0 = time.perf_counter()
            for c in conns:
                c.sendall(b"G")
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            dt = time.perf_counter() - t0
            for c in conns:
                c.sendall(b"A")
            out(mode="incast", senders=nn - 1, nbytes=nbytes * (nn - 1), seconds=dt,
                mbit_per_s=nbytes * (nn - 1) * 8 / dt / 1e6)
        else:
            s = connect(a[0])
            s.settimeout(60)
            payload = os.urandom(1 << 16)
            recv_exact(s, 1)
            left = nbytes
            while left:
                k = min(left, len(payload))
                s.sendall(payload[:k])
                left -= k
            recv_exact(s, 1)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
