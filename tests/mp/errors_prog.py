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
        table = g.allgather_int64([r, 10 * r, 7])
        assert table.tolist() == [[q, 10 * q, 7] for q in range(P)], table
        n = 3 if r != P - 1 else 5
        e = expect(mw.MismatchError, "dispatch (test)", lambda: g.allgather_int64(list(range(n)), "dispatch (test)"))
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
        from multiwrite import group as G
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
                k = int(g.ctrl[G._ANNOUNCE + 64:G._ANNOUNCE + 72].view(np.int64)[0])
                if k > first:
                    g.check_announcements("announce race", k, sig(k))     # raises on a torn read
                    checks += 1
        g.transport.barrier()
        assert r == 1 or checks > 1000, f"only {checks} checks"
        print(f"rank {r}: announce_race OK ({checks if r == 0 else k - first} {'checks' if r == 0 else 'announcements'})",
              flush=True)
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
