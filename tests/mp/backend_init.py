"""init_process_group("multiwrite") under mpirun (no MASTER_ADDR) and torchrun, and the glue around it.

Checks: importing multiwrite registers the backend and, under mpirun, sets RANK/WORLD_SIZE/LOCAL_RANK
from the MPI environment; init needs no MASTER_ADDR/MASTER_PORT there and sets them afterwards;
dist.get_backend() is "multiwrite" for the world and for new_group subgroups; group_of() maps torch
groups to multiwrite Groups (and rejects Gloo groups); the world Group is multiwrite's default group,
so mw.all_gather / mw.Buffer() work right after init, and mw.Buffer(group=pg) takes a torch subgroup;
destroy_process_group() releases everything and a second init works.
"""
import os
import sys

master_before_import = "MASTER_ADDR" in os.environ
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import multiwrite as mw  # noqa: E402  (registers the backend)
from multiwrite.backend import group_of  # noqa: E402

MPI = "OMPI_COMM_WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ


def check_env_after_import():
    assert "multiwrite" in dist.Backend.backend_list
    if MPI:
        assert not master_before_import, "the mpirun test must run without MASTER_ADDR"
        assert os.environ["RANK"] == os.environ["OMPI_COMM_WORLD_RANK"]
        assert os.environ["WORLD_SIZE"] == os.environ["OMPI_COMM_WORLD_SIZE"]
        assert os.environ["LOCAL_RANK"] == os.environ["OMPI_COMM_WORLD_LOCAL_RANK"]
        assert "MASTER_ADDR" not in os.environ      # set by the first init (rendezvous through MPI)


def round_trip(pg=None):
    """mw.Buffer on a torch group: dispatch then combine returns each token x (#destination ranks)."""
    buf = mw.Buffer(group=pg)
    g = buf.group
    P, r = g.size, g.rank
    E = 2 * P
    x = torch.arange(10 * 4, dtype=torch.float32).reshape(10, 4) + 100 * r
    idx = torch.stack([torch.arange(10) % E, (torch.arange(10) + r + 1) % E], dim=1)
    recv_x, recv_idx, recv_w, counts, handle = buf.dispatch(x, idx, torch.ones(10, 2), E)
    y = buf.combine(recv_x, handle)
    ndest = torch.tensor([len({int(e) // 2 for e in row}) for row in idx], dtype=torch.float32)[:, None]
    assert torch.allclose(y, x * ndest), "Buffer round trip through a torch group failed"


def check_store_private(rank):
    """The rendezvous store that rank 0 opened under mpirun listens on the address the job uses only
    (loopback: every rank is on this host), and a client that connects to it without the job's secret
    key prefix cannot see the job's keys."""
    import datetime
    port = int(os.environ["MASTER_PORT"])
    store = dist.distributed_c10d._get_default_store()
    if rank == 0:
        store.set("private-probe", b"job")
        listeners = []
        for line in open("/proc/net/tcp").read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":          # LISTEN
                listeners.append(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
        assert listeners == ["127.0.0.1"], f"the store listens on {listeners}, not on loopback only"
        outsider = dist.TCPStore("127.0.0.1", port, 1, False, datetime.timedelta(seconds=5))
        assert not outsider.check(["private-probe"]), "an outsider reads the job's keys by their names"
        outsider.set("private-probe", b"intruder")
        assert store.get("private-probe") == b"job", "an outsider overwrote a job key"
    dist.barrier()


def session(n):
    dist.init_process_group("multiwrite")
    rank, P = dist.get_rank(), dist.get_world_size()
    assert dist.get_backend() == "multiwrite", dist.get_backend()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        assert k in os.environ, f"{k} not set after init"
    assert int(os.environ["RANK"]) == rank and int(os.environ["WORLD_SIZE"]) == P
    g = group_of()
    assert g is mw.default_group() and group_of(dist.group.WORLD) is g
    expect = "mpi" if MPI else "gloo"
    assert g.transport.name == expect, f"transport {g.transport.name}, expected {expect}"
    assert g.topo.num_nodes == P // 2, g.topo             # MULTIWRITE_RANKS_PER_NODE=2
    # multiwrite's own API on the default group, right after init
    out = torch.empty(P * 3)
    mw.all_gather(out, torch.full((3,), float(rank)))
    assert torch.equal(out, torch.arange(P).float().repeat_interleave(3))
    round_trip()
    round_trip(dist.group.WORLD)
    # subgroups
    sub = dist.new_group([r for r in range(P) if r != 1])
    gloo = dist.new_group(backend="gloo")
    try:
        group_of(gloo)
    except TypeError as exc:
        assert "gloo" in str(exc)
    else:
        raise AssertionError("group_of accepted a Gloo group")
    if rank != 1:
        assert dist.get_backend(sub) == "multiwrite"
        sg = group_of(sub)
        assert sg.size == P - 1 and sg is not g
        round_trip(sub)
        t = torch.full((2,), float(rank))
        dist.broadcast(t, src=P - 1, group=sub)
        assert torch.all(t == P - 1)
    if MPI:
        check_store_private(rank)
    dist.barrier()
    print(f"[rank {rank}] session {n}: init OK (MASTER_ADDR={os.environ['MASTER_ADDR']}, "
          f"port {os.environ['MASTER_PORT']}, transport {g.transport.name}, {g.topo})", flush=True)
    dist.destroy_process_group()
    from multiwrite.runtime import group as mw_group
    assert mw_group._default is None or mw_group._default is not g, "default group left pointing at a closed Group"


def main():
    check_env_after_import()
    session(1)
    if MPI:
        # Re-initialisation after destroy_process_group. (Under torchrun, torch's own Gloo groups
        # cannot be re-created in one process: the agent's store keeps the first session's keys.)
        session(2)
    if os.environ.get("RANK") == "0":
        print("backend init OK", flush=True)


if __name__ == "__main__":
    sys.exit(main())
