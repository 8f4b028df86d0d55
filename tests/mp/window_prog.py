"""Multi-process multi_write check: random destination subsets (seeded) land exactly the right bytes at
exactly the right offsets and nothing else; notify counters and fence; inter-node bytes exact."""
import random
import sys

import numpy as np

import multiwrite as mw

ROUNDS = 40


def main():
    mw.init()
    topo = mw.topology()
    g = mw.default_group()
    P = topo.world_size
    size = 4096 + 64 * topo.rank            # windows of different sizes per rank
    win = mw.Window(size)
    assert win.sizes == [4096 + 64 * r for r in range(P)]
    expected = np.zeros(size, dtype=np.uint8)
    rng = random.Random(12345)               # same plan on every rank
    total_inter = {m: 0 for m in range(topo.num_nodes)}
    arrivals = np.zeros(P, dtype=np.int64)
    for rnd in range(ROUNDS):
        mode = "unicast" if rnd % 5 == 4 else "multiwrite"
        # each round: every rank writes a distinct region of every chosen destination's window
        plan = []
        for s in range(P):
            k = rng.randint(1, P)
            dests = rng.sample(range(P), k)
            n = rng.choice([0, 1, 7, 64, 333])
            per_dest = rng.random() < 0.3
            offs = [rng.randrange(0, 4096 - n + 1) for _ in dests] if per_dest \
                else [rng.randrange(0, 4096 - n + 1)] * len(dests)
            plan.append((s, dests, n, offs))
        # apply in source order, one source at a time (writes of a round may overlap)
        for s, dests, n, offs in plan:
            payload = np.frombuffer(bytes((s * 31 + rnd * 7 + i) % 251 for i in range(n)), dtype=np.uint8)
            mw.reset_stats()
            if s == topo.rank:
                req = win.multi_write(payload, dests, offs if len(set(offs)) > 1 else offs[0], mode=mode)
                req.wait()
                st = mw.stats()["inter_node"]
                remote = [d for d in dests if not topo.same_node(d)]
                nodes = {topo.node_of[d] for d in remote}
                if mode == "multiwrite":
                    want = sum(64 + (0 if len({offs[dests.index(d)] for d in remote if topo.node_of[d] == m}) == 1
                                     else 8 * sum(1 for d in remote if topo.node_of[d] == m)) + n for m in nodes)
                    assert st["messages"] == len(nodes), (st, nodes)
                else:
                    want = sum(64 + n for d in remote)
                    assert st["messages"] == len(remote), (st, remote)
                assert st["bytes"] == want, f"rank {topo.rank}: sent {st['bytes']} inter-node bytes, expected {want}"
            win.fence()
            if topo.rank in dests:
                off = offs[dests.index(topo.rank)]
                expected[off:off + n] = payload
                arrivals[s] += 1
            assert np.array_equal(win.buffer, expected), \
                f"rank {topo.rank} round {rnd} src {s} (dests {dests}, {n} B at {offs}): window differs at " \
                f"{np.nonzero(win.buffer != expected)[0][:10]}: got {win.buffer[win.buffer != expected][:8]} "\
                f"expected {expected[win.buffer != expected][:8]}"
            assert np.array_equal(win.arrivals(), arrivals), (win.arrivals(), arrivals)
            win.fence()   # nobody writes the next source's data before everyone has checked
    # notify without fence: rank 0 writes to everyone, each waits for it
    win.multi_write(np.full(8, 0xAB, dtype=np.uint8), list(range(P)), 4000).wait()
    win.wait_from(0, int(arrivals[0]) + 1, timeout=30)
    assert (win.buffer[4000:4008] == 0xAB).all()
    win.fence()
    # errors at the sender
    for bad, msg in [(lambda: win.multi_write(np.zeros(8, np.uint8), [P]), "outside the group"),
                     (lambda: win.multi_write(np.zeros(8, np.uint8), [0], 4096 + 64 * 0 - 4), "outside rank 0"),
                     (lambda: win.multi_write(np.zeros(8, np.uint8), [0, 0]), "duplicate"),
                     (lambda: win.multi_write(np.zeros(8, np.uint8), [0, 1], [0]), "offsets for")]:
        try:
            bad()
        except mw.WindowError as e:
            assert msg in str(e), (msg, str(e))
        else:
            raise AssertionError(f"no error for {msg}")
    win.free()
    try:
        win.multi_write(np.zeros(1, np.uint8), [0])
    except mw.WindowError as e:
        assert "after free" in str(e)
    else:
        raise AssertionError("use after free not detected")
    if topo.rank == 0:
        print(f"window OK: {topo}", flush=True)
    mw.finalize()


if __name__ == "__main__":
    sys.exit(main())
