"""The rack level under a real launcher (run by tests/test_racks_mp.py). argv[1] selects the case;
each rank sets its own MULTIWRITE_RACK / MULTIWRITE_TOPOLOGY from the launcher's rank before
mw.init(), and prints one "racks <case> OK" line when everything it checked held.

* tiers (4 ranks, MULTIWRITE_RANKS_PER_NODE=1, racks a a b b): the topology has 2 racks of 2 nodes;
  after an all_gather (small and large chunks, both modes) mw.stats() splits the inter-node bytes into
  intra_rack and inter_rack exactly as derived below.
* disagree (4 ranks, MULTIWRITE_RANKS_PER_NODE=2): rank 0 says rack "y", ranks 1-3 "x": node 0's ranks
  disagree, and every rank raises MismatchError at mw.init() naming node 0.
* missing_host (4 ranks, MULTIWRITE_RANKS_PER_NODE=2): racks from MULTIWRITE_TOPOLOGY files; rank 3's
  file does not list this host: rank 3 raises ValueError naming the host, every other rank a
  MismatchError saying rank 3 cannot start.
"""
import os
import socket
import sys
import tempfile

import torch

RANK = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "-1")))
HEADER = 64           # packet header (multiwrite.engine.packets.HEADER)


def tiers():
    os.environ["MULTIWRITE_RACK"] = "ab"[RANK // 2]
    import multiwrite as mw
    from multiwrite.engine import packets
    assert packets.HEADER == HEADER
    mw.init()
    topo = mw.topology()
    assert topo.world_size == 4 and topo.num_nodes == 4, topo
    assert topo.num_racks == 2 and topo.rack_names == ("a", "b"), topo
    assert topo.rack_of_node == (0, 0, 1, 1) and topo.nodes_of_rack == ((0, 1), (2, 3)), topo
    assert topo.rack_of == (0, 0, 1, 1) and topo.rack == RANK // 2, topo
    d = topo.as_dict()
    assert d["num_racks"] == 2 and d["rack"] == RANK // 2 and d["rack_names"] == ["a", "b"], d
    assert "num_racks=2 ('a': nodes 0, 1; 'b': nodes 2, 3)" in repr(topo), repr(topo)
    # Every node has one rank, so in either mode and on either path (small: the node's packet of its
    # L = 1 chunk to every other node's leader; large: one packet to the relay on every other node;
    # unicast: one per remote rank) each rank sends exactly one packet of HEADER + c bytes to every
    # other node: 1 to the other node of its rack, 2 to the nodes of the other rack.
    same_rack = len(topo.nodes_of_rack[topo.rack]) - 1
    other_racks = topo.num_nodes - 1 - same_rack
    assert (same_rack, other_racks) == (1, 2)
    for mode in ("multiwrite", "unicast"):
        for n in (256, 64 * 1024):                  # 1 KiB (small path), 256 KiB (large path) of float32
            x = torch.arange(n, dtype=torch.float32) + 1000 * topo.rank
            out = torch.empty(4 * n)
            mw.reset_stats()
            mw.all_gather(out, x, mode=mode)
            st = mw.stats()
            expected = torch.cat([torch.arange(n, dtype=torch.float32) + 1000 * r for r in range(4)])
            assert torch.equal(out, expected), f"rank {RANK}: all_gather wrong ({mode}, n={n})"
            packet = HEADER + 4 * n
            inter, intra_rack, inter_rack = st["inter_node"], st["intra_rack"], st["inter_rack"]
            assert intra_rack["bytes"] + inter_rack["bytes"] == inter["bytes"], st
            assert intra_rack["messages"] + inter_rack["messages"] == inter["messages"], st
            assert inter == {"bytes": 3 * packet, "messages": 3,
                             "per_peer_node": {m: packet for m in range(4) if m != topo.node}}, (mode, n, st)
            assert intra_rack == {"bytes": same_rack * packet, "messages": same_rack}, (mode, n, st)
            assert inter_rack == {"bytes": other_racks * packet, "messages": other_racks}, (mode, n, st)
    print(f"rank {RANK}: racks tiers OK: {topo}", flush=True)
    mw.finalize()


def disagree():
    os.environ["MULTIWRITE_RACK"] = "y" if RANK == 0 else "x"
    import multiwrite as mw
    try:
        mw.init()
    except mw.MismatchError as e:
        msg = str(e)
        assert "node 0" in msg and "'y' on rank(s) 0" in msg and "'x' on rank(s) 1" in msg, msg
        print(f"rank {RANK}: MismatchError: {msg}", flush=True)
        print(f"rank {RANK}: racks disagree OK", flush=True)
        return
    raise AssertionError(f"rank {RANK}: mw.init() accepted ranks of one node in different racks")


def missing_host():
    host = socket.gethostname()
    lines = "# hostname rack\nsomewhere-else r9\n" + ("" if RANK == 3 else f"{host} r1\n")
    fd, path = tempfile.mkstemp(prefix=f"mw-topology-{RANK}-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(lines)
    os.environ["MULTIWRITE_TOPOLOGY"] = path
    import multiwrite as mw
    try:
        mw.init()
    except (ValueError, mw.MismatchError) as e:
        msg = str(e)
        if RANK == 3:
            assert type(e) is ValueError and f"host {host!r} is not in the file" in msg, repr(e)
        else:
            assert isinstance(e, mw.MismatchError) and "rank 3 cannot start" in msg and host in msg, repr(e)
        print(f"rank {RANK}: {type(e).__name__}: {msg}", flush=True)
        print(f"rank {RANK}: racks missing_host OK", flush=True)
        return
    finally:
        os.unlink(path)
    raise AssertionError(f"rank {RANK}: mw.init() accepted a topology file without this host")


if __name__ == "__main__":
    assert RANK >= 0, "run under mpirun or torchrun"
    {"tiers": tiers, "disagree": disagree, "missing_host": missing_host}[sys.argv[1]]()
