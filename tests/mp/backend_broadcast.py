"""Multi-process check of mw.broadcast (multiwrite/broadcast.py), without torch.distributed.

Both modes, every root, several dtypes and sizes (0 bytes and 16 MiB included): every rank ends with
the root's bytes, and the inter-node bytes per node from mw.stats() equal the analytical count exactly
(MultiWrite: the root's node sends (N-1) packets; unicast: one per remote rank; 64-byte header each).
Also numpy arrays, non-contiguous tensors, and size/dtype disagreements (a clear MismatchError on the
ranks that can see it, no hang, the group still usable). Run by tests/test_backend_mp.py.
"""
import sys

import numpy as np
import torch

import multiwrite as mw
from multiwrite.errors import MismatchError

SIZES = [0, 1, 7, 1237, 65536]
BIG = 16 * 1024 * 1024 // 4


def payload(root, n, dtype):
    g = torch.Generator().manual_seed(5000 + root)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    if dtype.is_floating_point:
        return (torch.randn(n, generator=g) * 100).to(dtype)
    return torch.randint(0, 255, (n,), generator=g).to(dtype)


def per_node_bytes(g):
    topo = g.topo
    st = mw.stats(g)["inter_node"]
    rows = g.transport.allgather_obj((topo.node, st["bytes"], st["messages"]))
    sent, msgs = [0] * topo.num_nodes, [0] * topo.num_nodes
    for node, b, m in rows:
        sent[node] += b
        msgs[node] += m
    return sent, msgs


def check(root, n, dtype, mode):
    g = mw.default_group()
    topo = g.topo
    expected = payload(root, n, dtype)
    t = expected.clone() if topo.rank == root else torch.zeros(n, dtype=dtype)
    mw.reset_stats()
    out = mw.broadcast(t, root, mode=mode)
    assert out is t
    assert torch.equal(t.view(torch.uint8) if dtype == torch.bfloat16 else t,
                       expected.view(torch.uint8) if dtype == torch.bfloat16 else expected), \
        f"rank {topo.rank}: broadcast wrong (root {root}, n={n}, {dtype}, {mode})"
    c = n * expected.element_size()
    sent, msgs = per_node_bytes(g)
    root_node = topo.node_of[root]
    for m in range(topo.num_nodes):
        if m != root_node:
            want_packets = 0
        elif mode == "multiwrite":
            want_packets = topo.num_nodes - 1
        else:
            want_packets = topo.world_size - len(topo.node_ranks[root_node])
        assert sent[m] == want_packets * (c + 64), \
            f"node {m} sent {sent[m]} inter-node bytes ({mode}, root {root}), expected {want_packets} x ({c} + 64)"
        assert msgs[m] == want_packets, f"node {m} sent {msgs[m]} packets, expected {want_packets}"


def main():
    mw.init()
    g = mw.default_group()
    topo = g.topo
    P = topo.world_size
    for mode in ("multiwrite", "unicast"):
        for root in range(P):
            for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.bool):
                for n in SIZES:
                    check(root, n, dtype, mode)
        check(P - 1, BIG, torch.float32, mode)
    # non-contiguous tensor, 2-D
    base = torch.zeros(6, 8)
    view = base[:, ::2]
    if topo.rank == 1:
        view.copy_(torch.arange(24.).reshape(6, 4))
    mw.broadcast(view, 1)
    assert torch.equal(view, torch.arange(24.).reshape(6, 4)) and torch.all(base[:, 1::2] == 0)
    # numpy arrays
    a = np.arange(10, dtype=np.int32) * 3 if topo.rank == P - 1 else np.zeros(10, dtype=np.int32)
    mw.broadcast(a, P - 1)
    assert (a == np.arange(10) * 3).all()
    # bad root
    try:
        mw.broadcast(torch.zeros(3), P)
    except ValueError as exc:
        assert "root" in str(exc)
    else:
        raise AssertionError("root outside the group accepted")
    # size disagreement, root's node agrees: the ranks that see it raise, the others complete
    if topo.num_nodes > 1:
        last = P - 1
        last_node = topo.node_of[last]
        alone = len(topo.node_ranks[last_node]) == 1      # a lone root has no local peer to compare with
        for root, raisers in ((0, set(topo.node_ranks[last_node])),
                              (last, set(range(P)) - ({last} if alone else set()))):
            n = 8 + (4 if topo.rank == last else 0)
            t = torch.ones(n) if topo.rank == root else torch.zeros(n)
            try:
                mw.broadcast(t, root)
                raised = False
            except MismatchError as exc:
                raised = True
                assert "broadcast" in str(exc), str(exc)
            assert raised == (topo.rank in raisers), \
                f"rank {topo.rank}: raised={raised} for root {root}, expected the ranks {sorted(raisers)} to raise"
        # dtype disagreement with the same byte size is detected too
        t = torch.zeros(4, dtype=torch.int32 if topo.rank == last else torch.float32)
        try:
            mw.broadcast(t, 0)
        except MismatchError:
            pass
        # still usable
        t = torch.full((5,), 3.0) if topo.rank == 0 else torch.zeros(5)
        mw.broadcast(t, 0)
        assert torch.all(t == 3.0), "group unusable after a mismatch"
    if topo.rank == 0:
        print(f"broadcast OK: {topo}", flush=True)
    mw.finalize()


if __name__ == "__main__":
    sys.exit(main())
