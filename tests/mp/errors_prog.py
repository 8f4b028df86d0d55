"""Error cases under a real launcher. argv[1] selects the case; every rank must see the expected
exception (the program exits non-zero otherwise) and the run must end in bounded time."""
import os
import sys
import time

import numpy as np
import torch

import multiwrite as mw


def expect(exc_type, text, fn):
    try:
        fn()
    except exc_type as e:
        assert text in str(e), f"expected {text!r} in: {e}"
        return e
    raise AssertionError(f"no {exc_type.__name__} raised (expected {text!r})")


def relay_fuzz(mw, torch, topo):
    """Malformed and misdirected packets into node 1's relay (sent by rank 0 through the relay's own
    transport): noise instead of a header, a write to an unknown window (with its payload), an
    out-of-window write to a real window, a header claiming 2**40 payload bytes, a packet claiming
    another source. The relay refuses each, keeps serving: valid writes that follow arrive intact, the
    fence on node 1 reports the refusals once, and the next fence is clean."""
    from multiwrite import _core
    from multiwrite.engine import relay as R
    g = mw.default_group()
    P, r = topo.world_size, topo.rank
    assert topo.num_nodes == 2 and P == 4
    win = mw.Window(1024)
    relay = R.service(g)
    target = topo.node_ranks[1][0]           # node 1's relay (its leader)
    refused_here = 0
    if r == 0:
        H = 64

        def header(**kw):
            a = dict(window_id=win.id, seq=0, src_rank=0, dest_node=1, dest_bitmap=0b11, offset=0, payload_len=16)
            a.update(kw)
            h = np.empty(H, np.uint8)
            _core.build_header(h, **a)
            return h

        def counted():               # a packet to the real window: the fence expects it
            win._seq_to_node[1] += 1
            win._sent_to_node[1] += 1
            return int(win._seq_to_node[1])

        sends = []
        noise = np.random.default_rng(5).integers(0, 256, H, dtype=np.uint8)
        relay._sent[target] += 1
        sends.append(relay.transport.isend(noise, target, R.TAG_HEADER))                        # 1: noise
        # 2: unknown window, 1 MiB payload: the relay drains it (Open MPI 5 would write a truncated
        # message of this size past a smaller receive buffer: the drain must receive it whole)
        sends += relay.post(target, header(window_id=win.id + 1000, seq=1, payload_len=1 << 20),
                            np.ones(1 << 20, np.uint8))
        sends += relay.post(target, header(seq=counted(), offset=1020, payload_len=16),
                            np.ones(16, np.uint8))                                               # 3: out of window
        relay._sent[target] += 1
        sends.append(relay.transport.isend(header(seq=counted(), payload_len=1 << 40), target, R.TAG_HEADER))  # 4
        sends += relay.post(target, header(seq=counted(), src_rank=1, payload_len=16), np.ones(16, np.uint8))  # 5
        refused_here = 3             # packets 3, 4 and 5 are for the real window
        for q in sends[:1]:
            q.wait(g.timeout_s)
    # valid writes after the bad packets: every rank writes its rank into its slot of every window
    data = torch.full((8,), r + 1, dtype=torch.uint8)
    win.multi_write(data, [q for q in range(P) if q != r], offset=8 * r).wait()
    if topo.node == 1:
        e = expect(mw.MultiwriteError, "refused 3 packet(s)", win.fence)
        print(f"rank {r}: fence reported: {e}", flush=True)
    else:
        win.fence()
    got = win.tensor()[:8 * P].view(P, 8)
    for q in range(P):
        if q != r:
            assert got[q].tolist() == [q + 1] * 8, (r, q, got.tolist(), win.arrivals().tolist(),
                                                    [_core.atomic_load_u32(win._mem, o) for o in (0, 4, 8)],
                                                    dict(relay._received), relay.refused)
    win.multi_write(data, [q for q in range(P) if q != r], offset=512 + 8 * r).wait()
    win.fence()                              # clean: nothing refused since the last fence
    assert relay.error is None, relay.error
    win.free()
    print(f"rank {r}: relay_fuzz OK (refused by node 1's relay: {relay.refused if r == target else '-'}; "
          f"sent {refused_here})", flush=True)


def recv_drain(mw, torch, topo):
    """A packet receive (_packets.PacketRecv) from a peer whose header announces a length this rank
    does not expect: a MismatchError at once; a payload that was sent is drained, so the next packet
    on the same tag lands intact; a header claiming 2**40 bytes allocates nothing (exact-size
    transports drain only up to _packets.DRAIN_LIMIT)."""
    from multiwrite.engine import packets as _packets
    g = mw.default_group()
    r = topo.rank
    peer = {0: 2, 2: 0}.get(r)
    if peer is not None:
        tag = 77
        if r == 0:
            h = np.empty(64, np.uint8)
            sends = _packets.send(g, h, np.full(1000, 1, np.uint8), peer, tag, window_id=9, seq=1, dest_bitmap=1)
            h2 = np.empty(64, np.uint8)
            sends += _packets.send(g, h2, np.full(100, 2, np.uint8), peer, tag, window_id=9, seq=2, dest_bitmap=1)
            g.wait_all(sends, "recv_drain sends")
            if not g.transport.exact_size_recv:
                print(f"rank {r}: recv_drain OK", flush=True)
                return
            h3 = np.empty(64, np.uint8)
            _packets.build(h3, window_id=9, seq=3, src_rank=0, dest_node=topo.node_of[peer], dest_bitmap=1, offset=0,
                           payload_len=1 << 40)
            g.transport.isend(h3, peer, tag).wait(g.timeout_s)
        else:
            payload, header = np.zeros(100, np.uint8), np.empty(64, np.uint8)
            # (MPI reports the longer payload itself: MPI_ERR_TRUNCATE, which consumes the message)
            expect(mw.MismatchError, "sent 1000 bytes, this rank expects 100" if g.transport.exact_size_recv else
                   "sizes differ across ranks", lambda: _packets.PacketRecv(g, header, payload, peer, tag).wait(g.timeout_s))
            _packets.PacketRecv(g, header, payload, peer, tag).wait(g.timeout_s)
            assert payload.tolist() == [2] * 100 and header[16] == 2, payload[:8]
            if g.transport.exact_size_recv:
                t0 = time.monotonic()
                expect(mw.MismatchError, f"sent {1 << 40} bytes",
                       lambda: _packets.PacketRecv(g, header, payload, peer, tag).wait(g.timeout_s))
                assert time.monotonic() - t0 < 5
    print(f"rank {r}: recv_drain OK", flush=True)


def _no_probed_state(mw):
    """After the mismatches: no probed receive or orphan is left in the MPI transport, nothing is
    still being drained (every sender's send could complete)."""
    g = mw.default_group()
    t = g.transport
    if not hasattr(t, "_queues"):
        return
    deadline = time.monotonic() + 10
    while (t._queues or t.draining()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not t._queues and not t._draining and not t.left_undrained, (t._queues, t._draining, t.left_undrained)


def orphan_drain(mw, topo):
    """MPI transport, two ranks: a probed receive given up before its large (rendezvous) message came
    leaves an orphan; the message is drained when it comes, so the sender's send completes; a later
    receive on the same (source, tag), agreed or not, gets the NEXT message, not the orphan's. The
    same for a probed receive dropped without being cancelled, for one abandoned as expecting no
    message, for a payload orphan after a header that came with its payload (``unless_previous_over``),
    and for ``discard``. A probed any-source receive of a message larger than its buffer fails with a
    MismatchError and receives it whole; the next one gets the next message."""
    g = mw.default_group()
    t, r = g.transport, topo.rank
    if t.name != "mpi":
        print(f"rank {r}: orphan_drain OK (no probed receives on {t.name})", flush=True)
        return
    assert topo.world_size == 2
    big, small = 1 << 20, 1 << 10
    T = 3_000_001                     # far from the operators' tags

    def send(tag, n, value):
        return t.isend(np.full(n, value, np.uint8), 1, tag)

    def recv(tag, n=small, agreed=True):
        buf = np.zeros(n, np.uint8)
        return t.irecv(buf, 0, tag, agreed=agreed), buf

    if r == 1:
        # 1. cancelled before its message came; then an agreed receive on the same key (queued behind
        #    the orphan: a plain one of 1 KiB would match the 1 MiB message)
        q, _ = recv(T, agreed=False)
        q.cancel()
        # 2. dropped without a cancel (its weak reference in the queue dies: an orphan)
        q2, _ = recv(T + 1, agreed=False)
        del q2
        # 3. abandoned as expecting no message: the next message is the next receive's
        q3, _ = recv(T + 2, agreed=False)
        q3.abandon(expected=False)
        # 4. a packet: header and payload receives, both abandoned before anything came; the sender
        #    sends one fused message (more than a header), so no payload follows: the payload orphan
        #    goes with it
        qh, _ = recv(T + 3, 64, agreed=False)
        qp, _ = recv(T + 3, small, agreed=False)
        qh.abandon()
        qp.abandon(unless_previous_over=64)
        # 5. discard: the next message on the key is not wanted
        t.discard(0, T + 4)
    t.barrier()
    if r == 0:
        sends = [send(T, big, 1), send(T, small, 2), send(T + 1, big, 3), send(T + 1, small, 4),
                 send(T + 2, small, 5), send(T + 3, 64 + big, 6), send(T + 3, small, 7),
                 send(T + 4, big, 8), send(T + 4, small, 9)]
        t0 = time.monotonic()
        for q in sends:          # the 1 MiB sends complete only once rank 1 receives them
            q.wait(20.0, "orphan_drain sends")
        print(f"rank 0: every send completed in {time.monotonic() - t0:.2f}s", flush=True)
    else:
        for tag, agreed, value in ((T, True, 2), (T + 1, False, 4), (T + 2, True, 5), (T + 3, True, 7),
                                   (T + 4, False, 9)):
            q, buf = recv(tag, agreed=agreed)
            q.wait(20.0, f"orphan_drain receive on tag {tag}")
            assert (buf == value).all(), (tag, buf[:8])
        _no_probed_state(mw)
    t.barrier()
    # any source, not agreed: a message larger than the buffer is a MismatchError, received whole
    if r == 0:
        for q in (send(T + 5, 256 << 10, 1), send(T + 5, small, 2)):
            q.wait(20.0, "orphan_drain any-source sends")
    else:
        buf = np.zeros(small, np.uint8)
        e = expect(mw.MismatchError, f"sent {256 << 10} B", lambda: t.irecv_any(buf, T + 5, agreed=False).wait(20.0))
        q = t.irecv_any(buf, T + 5, agreed=False)
        q.wait(20.0)
        assert q.source() == 0 and q.count() == small and (buf == 2).all(), (q.source(), q.count(), buf[:8])
        print(f"rank 1: any source: {e}", flush=True)
    t.barrier()
    print(f"rank {r}: orphan_drain OK", flush=True)


def main(case):
    mw.init()
    topo = mw.topology()
    P, r = topo.world_size, topo.rank
    if case == "size_mismatch":
        n = 100 if r != P - 1 else 120
        e = expect(mw.MismatchError, "", lambda: mw.all_gather(torch.empty(P * n), torch.ones(n)))
        print(f"rank {r}: {type(e).__name__}: {e}", flush=True)
    elif case == "path_mismatch":
        # the last rank's chunk is too big for the barrier-free small path: the ranks take different
        # paths, and every rank must still get a MismatchError (not a timeout)
        n = 100 if r != P - 1 else 1 << 18
        e = expect(mw.MismatchError, "", lambda: mw.all_gather(torch.empty(P * n), torch.ones(n)))
        print(f"rank {r}: {type(e).__name__}: {e}", flush=True)
    elif case == "control_mismatch":
        # the control allgather behind dispatch/combine's agreement (the small all_gather path):
        # equal lengths give every rank's values, unequal ones a MismatchError on every rank
        g = mw.init()
        from multiwrite.engine.control import allgather_int64
        table = allgather_int64(g, [r, 10 * r, 7])
        assert table.tolist() == [[q, 10 * q, 7] for q in range(P)], table
        n = 3 if r != P - 1 else 5
        e = expect(mw.MismatchError, "dispatch (test)", lambda: allgather_int64(g, list(range(n)), "dispatch (test)"))
        print(f"rank {r}: {type(e).__name__}: {e}", flush=True)
    elif case == "dtype_mismatch":
        dt = torch.float32 if r != P - 1 else torch.int32
        e = expect(mw.MismatchError, "", lambda: mw.all_gather(torch.empty(P * 8, dtype=dt), torch.ones(8, dtype=dt)))
        print(f"rank {r}: {type(e).__name__}: {e}", flush=True)
    elif case == "bad_args":
        expect(ValueError, "elements", lambda: mw.all_gather(torch.empty(P * 8 + 1), torch.ones(8)))
        expect(TypeError, "dtype", lambda: mw.all_gather(torch.empty(P * 8, dtype=torch.int32), torch.ones(8)))
        win = mw.Window(256)
        expect(mw.WindowError, "outside the group", lambda: win.multi_write(np.zeros(4, np.uint8), [P + 3]))
        expect(mw.WindowError, "outside rank", lambda: win.multi_write(np.zeros(4, np.uint8), [0], 253))
        win.free()
        expect(mw.WindowError, "after free", lambda: win.fence())
        print(f"rank {r}: bad_args OK", flush=True)
    elif case == "sync_each":
        # Group.node_sync_each: each local rank is visited once, own first, as soon as it arrives
        # (not after the last one), and an error on one rank is raised on all of its node
        g = mw.default_group()
        L, me = topo.local_size, topo.local_rank
        for rnd in range(3):
            late = (rnd + 1) % L                     # a different local rank arrives 0.5 s late each round
            time.sleep(0.5 if me == late else 0.0)
            seen, at = [], {}
            g.node_sync_each("sync_each test", None, lambda i: (seen.append(i), at.setdefault(i, time.monotonic())))
            assert seen[0] == me and sorted(seen) == list(range(L)), f"rank {r}: visited {seen}"
            if me != late:
                early = [i for i in range(L) if i != late]
                assert max(at[i] for i in early) < at[late] - 0.3, f"rank {r}: visits {at} not as they arrived"
        err = ValueError("boom on rank 0") if r == 0 else None
        seen = []
        if topo.node == topo.node_of[0]:
            e = expect(Exception, "boom on rank 0",
                       lambda: g.node_sync_each("sync_each test", err, seen.append))
            assert r == 0 or isinstance(e, mw.MismatchError), repr(e)
            assert (seen == []) if r == 0 else (0 not in seen), f"rank {r}: visited {seen} after the error"
        else:
            g.node_sync_each("sync_each test", None, seen.append)
            assert sorted(seen) == list(range(L)), seen
        print(f"rank {r}: sync_each OK", flush=True)
    elif case == "announce_race":
        # Group.check_announcements reads a node peer's announcement while the peer may be writing it
        # (a rank waiting in a node barrier checks every 20 ms): it must never see a torn one. Rank 1
        # announces calls of two shapes as fast as it can; rank 0 checks each one it sees against the
        # signature of that shape. Seqs far above the group's own, so no real call matches.
        from multiwrite.runtime import group as G
        g = mw.default_group()
        assert topo.local_size == 2, "run with 2 ranks on one node"
        sig = lambda k: (1, k, 74, 769, 0, 1) if k % 2 else (5, k, 7)
        g.transport.barrier()
        end, first, k, checks = time.monotonic() + 2.0, 1 << 40, 1 << 40, 0
        while time.monotonic() < end:
            if r == 1:
                k += 1
                g.announce(k, sig(k))
            else:
                k = int(g.ctrl[G._ANNOUNCE + G._SLOT:G._ANNOUNCE + G._SLOT + 8].view(np.int64)[0])
                if k > first:
                    g.check_announcements("announce race", k, sig(k))     # raises on a torn read
                    checks += 1
        g.transport.barrier()
        assert r == 1 or checks > 1000, f"only {checks} checks"
        print(f"rank {r}: announce_race OK ({checks if r == 0 else k - first} {'checks' if r == 0 else 'announcements'})",
              flush=True)
    elif case == "window_bad_size":
        # one rank passes an invalid size: every rank raises at once (the size exchange carries it),
        # nobody waits for the timeout (60 s here)
        t0 = time.monotonic()
        e = expect(mw.WindowError, "non-negative integer", lambda: mw.Window(-1 if r == P - 1 else 256))
        took = time.monotonic() - t0
        assert took < 10, f"took {took:.1f}s"
        assert r == P - 1 or f"rank(s) [{P - 1}]" in str(e), e
        win = mw.Window(64)               # the group is still usable
        win.free()
        print(f"rank {r}: window_bad_size OK ({took:.2f}s): {e}", flush=True)
    elif case == "alltoall_splits":
        # the last rank sends rank 0 one row more than rank 0 expects: every rank raises, not only the
        # pair that disagrees
        from multiwrite.ops.alltoall import all_to_all_single
        splits = [2] * P
        if r == P - 1:
            splits = [3] + [2] * (P - 2) + [1]
        x = torch.arange(2 * P, dtype=torch.float32)
        out = torch.empty(2 * P)
        e = expect(mw.MismatchError, "split sizes differ", lambda: all_to_all_single(out, x, [2] * P, splits))
        assert f"rank {P - 1} sends rank 0 12 bytes, rank 0 expects 8" in str(e), e
        all_to_all_single(out, x)         # the group is still usable
        print(f"rank {r}: alltoall_splits OK: {e}", flush=True)
    elif case == "node_sizes":
        # node 1 calls all_gather with 4 x node 0's chunk (16 K and 256 K float32): every rank raises
        # MismatchError, nothing is written past a receive buffer (Open MPI 5 would write a truncated
        # message there: the interpreter died in free()), and the group stays usable
        # (at 16 K node 0 takes the small path, one fused message per packet, node 1 the large one)
        for n in (1 << 14, 1 << 18):
            c = n if topo.node == 0 else 4 * n
            t0 = time.monotonic()
            e = expect(mw.MismatchError, "", lambda: mw.all_gather(torch.zeros(P * c), torch.full((c,), float(r))))
            took = time.monotonic() - t0
            print(f"rank {r}: {n}: {took:.2f}s {type(e).__name__}: {str(e)[:160]}", flush=True)
            # promptly: no wait for a message that never comes (nor packets.SETTLE_S for a send)
            assert took < 4.5, f"rank {r}: the mismatch took {took:.1f}s"
        out = torch.zeros(P * 8)
        mw.all_gather(out, torch.full((8,), float(r)))
        assert out.view(P, 8)[:, 0].tolist() == [float(q) for q in range(P)], out
        big = torch.zeros(P * (1 << 16))
        mw.all_gather(big, torch.full((1 << 16,), float(r)))
        assert big.view(P, -1)[:, -1].tolist() == [float(q) for q in range(P)]
        _no_probed_state(mw)
        print(f"rank {r}: node_sizes OK", flush=True)
    elif case == "node_sizes_bcast":
        # broadcast whose size differs between the root's node and the other: the ranks of the node
        # that disagrees with the root raise MismatchError (the root's node got nothing to check:
        # see mw.broadcast), whichever node passes the larger size (4 x: 16 K and 256 K float32), and
        # nothing is written past a receive buffer (unicast: the receive lands in the tensor itself);
        # the group stays usable
        for mode in ("multiwrite", "unicast"):
            for root in (0, P - 1):
                for n in (1 << 14, 1 << 18):
                    c = n if topo.node == topo.node_of[root] else (n // 4 if root else 4 * n)
                    t = torch.full((c,), float(r))
                    t0 = time.monotonic()
                    if topo.node == topo.node_of[root]:
                        mw.broadcast(t, root, mode=mode)
                        print(f"rank {r}: {mode} root {root} {n}: returned", flush=True)
                    else:
                        e = expect(mw.MismatchError, "", lambda: mw.broadcast(t, root, mode=mode))
                        print(f"rank {r}: {mode} root {root} {n}: MismatchError: {str(e)[:160]}", flush=True)
                    took = time.monotonic() - t0
                    assert took < 4.5, f"rank {r}: {mode} root {root} {n}: took {took:.1f}s"
        t = torch.full((1 << 16,), float(r))
        mw.broadcast(t, P - 1)
        assert (t == float(P - 1)).all()
        _no_probed_state(mw)
        print(f"rank {r}: node_sizes_bcast OK", flush=True)
    elif case == "orphan_drain":
        orphan_drain(mw, topo)
    elif case == "relay_fuzz":
        relay_fuzz(mw, torch, topo)
    elif case == "recv_drain":
        recv_drain(mw, torch, topo)
    elif case == "timeout":
        # the last rank never calls the collective: the others must get a timeout, not hang
        if r == P - 1:
            time.sleep(float(os.environ["MULTIWRITE_TIMEOUT"]) * 2 + 2)
            print(f"rank {r}: slept", flush=True)
        else:
            t0 = time.monotonic()
            e = expect(mw.MultiwriteTimeout, "timed out", lambda: mw.all_gather(torch.empty(P * 4), torch.ones(4)))
            took = time.monotonic() - t0
            limit = float(os.environ["MULTIWRITE_TIMEOUT"])
            assert took < limit * 3 + 5, f"timeout took {took:.1f}s (limit {limit}s)"
            print(f"rank {r}: timeout after {took:.1f}s: {e}", flush=True)
        os._exit(0)   # peers have pending requests; skip MPI_Finalize's collective shutdown
    elif case == "crash":
        for i in range(3):
            mw.all_gather(torch.empty(P * 1000), torch.ones(1000))
            if r == P - 1 and i == 1:
                print(f"rank {r}: crashing", flush=True)
                os._exit(7)
    else:
        raise SystemExit(f"unknown case {case}")
    mw.finalize()


if __name__ == "__main__":
    main(sys.argv[1])
