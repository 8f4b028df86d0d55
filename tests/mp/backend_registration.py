"""The "multiwrite" backend as torch.distributed sees it (tests/test_backend_registration_mp.py), on 4 ranks
as 2 emulated nodes, under mpirun (no MASTER_ADDR) and torchrun, with and without
TORCH_DISTRIBUTED_DEBUG=DETAIL:

* registration: ``pg._device_types == [cpu]``, ``pg._get_backend(cpu)`` (world group and subgroups),
  ``dist.get_backend``, the backend's device capability; rendezvous hooks: the public ``mpi://`` scheme
  is registered, torch's ``env://`` handler is wrapped only under mpirun without MASTER_ADDR, and
  under mpirun a second session initialised with ``init_method="mpi://"`` works;
* DeviceMesh: ``init_device_mesh("cpu", (2, 2))`` and an all-gather on each mesh dimension (through
  ``dist`` and through DTensor);
* mismatched arguments raise on every rank: broadcast, gather, scatter (the backend's own argument
  check), all-gathers and all_to_all (their own detection), and under DETAIL also all_reduce with 2 vs
  3 elements and two ranks calling different ops; the group keeps working afterwards;
* no warning is emitted while multiwrite code is on the stack (every op of the backend, sync and async,
  any-source receive, object collectives, subgroups, DeviceMesh, teardown);
* ``mw.Buffer.dispatch`` / ``combine`` with tensors that require grad raise and point to ``mw.moe``;
  under ``torch.no_grad()`` they run;
* diagnostics go to ``logging.getLogger("multiwrite")``.
"""
import logging
import os
import sys
import traceback
import warnings

_STARTED_WITHOUT_MASTER_ADDR = "MASTER_ADDR" not in os.environ
_HERE = os.path.dirname(os.path.abspath(__file__))

# Every warning, with whether multiwrite code (not this test) was on the stack when it was issued.
_WARNINGS = []


def _record_warning(message, category, filename, lineno, file=None, line=None):
    stack = [f.filename for f in traceback.extract_stack()[:-1]]
    ours = [f for f in stack if f"{os.sep}multiwrite{os.sep}" in f and not f.startswith(_HERE)]
    _WARNINGS.append((category.__name__, str(message), f"{filename}:{lineno}", ours[-1] if ours else None))


warnings.showwarning = _record_warning
warnings.simplefilter("always")
# Self-test of the recorder: a warning issued from a frame of a multiwrite/ file is attributed to it.
exec(compile("import warnings; warnings.warn('recorder self-test')", os.path.join("x", "multiwrite", "probe.py"),
             "exec"))
assert _WARNINGS and _WARNINGS[-1][1] == "recorder self-test" and _WARNINGS[-1][3], _WARNINGS
_WARNINGS.clear()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import multiwrite as mw  # noqa: E402  (registers the backend)
from multiwrite.errors import MismatchError  # noqa: E402

LOG_RECORDS = []


class _Collect(logging.Handler):
    def emit(self, record):
        LOG_RECORDS.append(record.getMessage())


logging.getLogger("multiwrite").addHandler(_Collect(level=logging.DEBUG))
logging.getLogger("multiwrite").setLevel(logging.DEBUG)

CPU = torch.device("cpu")
DETAIL = os.environ.get("TORCH_DISTRIBUTED_DEBUG", "").upper() == "DETAIL"
MPIRUN = "OMPI_COMM_WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ


def log(msg):
    if dist.get_rank() == 0:
        print(f"[rank 0] {msg}", flush=True)


def check_registration(pg, ranks):
    from torch.distributed.distributed_c10d import _device_capability, _get_object_coll_device
    assert dist.get_backend(pg) == "multiwrite", dist.get_backend(pg)
    assert pg._device_types == [CPU], pg._device_types
    backend = pg._get_backend(CPU)
    assert isinstance(backend, torch._C._distributed_c10d.Backend), type(backend)
    assert (backend.rank(), backend.size()) == (pg.rank(), pg.size()) == (ranks.index(dist.get_rank()), len(ranks))
    assert _device_capability(pg) == ["cpu"], _device_capability(pg)
    assert _get_object_coll_device(pg) == "cpu"
    assert dist.get_process_group_ranks(pg) == ranks


def check_rendezvous_hooks():
    import importlib
    rdzv = importlib.import_module("torch.distributed.rendezvous")
    assert "mpi" in rdzv._rendezvous_handlers, "the public mpi:// scheme is not registered"
    wrapped = getattr(rdzv._rendezvous_handlers["env"], "_multiwrite", False)
    want = MPIRUN and _STARTED_WITHOUT_MASTER_ADDR
    assert wrapped == want, f"env:// wrapped: {wrapped}, expected {want} (mpirun {MPIRUN}, " \
                            f"MASTER_ADDR unset at start {_STARTED_WITHOUT_MASTER_ADDR})"
    return wrapped


def check_mesh():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    rank, P = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (2, P // 2), mesh_dim_names=("node", "local"))
    for dim in ("node", "local"):
        g = mesh.get_group(dim)
        ranks = dist.get_process_group_ranks(g)
        check_registration(g, ranks)
        out = torch.empty(len(ranks) * 3)
        dist.all_gather_single(out, torch.full((3,), float(rank)), group=g)
        want = torch.cat([torch.full((3,), float(r)) for r in ranks])
        assert torch.equal(out, want), (dim, out, want)
    full = torch.arange(4.0 * P).reshape(2 * P, 2)
    t = distribute_tensor(full, mesh, [Shard(0), Shard(1)])
    assert torch.equal(t.full_tensor(), full)
    return mesh


def everyone_raised(case, fn, expect=(MismatchError,)):
    """Run ``fn`` on every rank; every rank must raise one of ``expect``. Afterwards the group must
    still work (a correct all-gather)."""
    rank = dist.get_rank()
    try:
        fn(rank)
        raised = "returned"
    except expect as exc:
        raised = type(exc).__name__
        if rank == 0:
            print(f"[rank 0]   {case}: {str(exc)[:220]}", flush=True)
    except Exception as exc:  # noqa: BLE001 - reported below
        raised = f"unexpected {type(exc).__name__}: {exc}"
    outcomes = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, raised)
    bad = [(r, o) for r, o in enumerate(outcomes) if o == "returned" or o.startswith("unexpected")]
    assert not bad, f"{case}: not every rank raised: {outcomes}"
    out = torch.empty(dist.get_world_size())
    dist.all_gather_single(out, torch.tensor([float(rank)]))
    assert out.tolist() == [float(r) for r in range(dist.get_world_size())], out
    log(f"mismatch {case}: raised on {len(outcomes)}/{len(outcomes)} ranks ({outcomes[0]})")


def check_mismatches():
    P = dist.get_world_size()

    def sized(rank, bad=3):
        return 3 if rank == bad else 2

    cases = {
        # the backend's own argument agreement
        "broadcast size (remote node)": lambda r: dist.broadcast(torch.ones(sized(r)), 0),
        "broadcast dtype (root's node)": lambda r: dist.broadcast(
            torch.ones(2, dtype=torch.int32 if r == 1 else torch.float32), 0),
        "gather size": lambda r: dist.gather(torch.ones(sized(r)), [torch.empty(2) for _ in range(P)]
                                             if r == 0 else None, dst=0),
        "gather dtype": lambda r: dist.gather(torch.ones(2, dtype=torch.int32 if r == 1 else torch.float32),
                                              [torch.empty(2) for _ in range(P)] if r == 0 else None, dst=0),
        "scatter size": lambda r: dist.scatter(torch.empty(sized(r)), [torch.ones(2) for _ in range(P)]
                                               if r == 0 else None, src=0),
        # ops that detect disagreement themselves
        "all_gather_single size": lambda r: dist.all_gather_single(torch.empty(P * sized(r)), torch.ones(sized(r))),
        "all_gather dtype": lambda r: dist.all_gather(
            [torch.empty(2, dtype=torch.int32 if r == 1 else torch.float32) for _ in range(P)],
            torch.ones(2, dtype=torch.int32 if r == 1 else torch.float32)),
        "all_to_all_single size": lambda r: dist.all_to_all_single(torch.empty(P * sized(r)),
                                                                   torch.ones(P * sized(r))),
        "all_to_all size": lambda r: dist.all_to_all([torch.empty(sized(r)) for _ in range(P)],
                                                     [torch.ones(sized(r)) for _ in range(P)]),
    }
    if DETAIL:
        cases["all_reduce 2 vs 3 elements (DETAIL)"] = lambda r: dist.all_reduce(torch.ones(3 if r == 1 else 2))
        cases["all_reduce vs broadcast (DETAIL)"] = lambda r: (
            dist.broadcast(torch.ones(2), 0) if r == 1 else dist.all_reduce(torch.ones(2)))
    for case, fn in cases.items():
        everyone_raised(case, fn)
    # A rank whose own arguments are invalid raises its own error; the others learn it at once.
    everyone_raised("gather: the root's list is one tensor short",
                    lambda r: dist.gather(torch.ones(2), [torch.empty(2) for _ in range(P - 1)] if r == 0 else None,
                                          dst=0), expect=(ValueError,))
    return len(cases) + 1


def exercise_ops(mesh):
    """Every op of the backend once (results are tested in test_backend_mp): warnings are recorded."""
    rank, P = dist.get_rank(), dist.get_world_size()
    x = torch.arange(4.0) + rank
    dist.all_gather_single(torch.empty(4 * P), x)
    dist.all_gather([torch.empty(4) for _ in range(P)], x)
    dist.broadcast(x.clone(), 0)
    dist.all_reduce(x.clone())
    dist.reduce(x.clone(), 0)
    dist.reduce_scatter_single(torch.empty(1), torch.ones(P))
    dist.reduce_scatter(torch.empty(1), [torch.ones(1) for _ in range(P)])
    dist.all_to_all_single(torch.empty(P), torch.ones(P))
    dist.all_to_all([torch.empty(1) for _ in range(P)], [torch.ones(1) for _ in range(P)])
    dist.gather(torch.ones(1), [torch.empty(1) for _ in range(P)] if rank == 0 else None, dst=0)
    dist.scatter(torch.empty(1), [torch.ones(1) for _ in range(P)] if rank == 0 else None, src=0)
    dist.barrier()
    for work in (dist.all_reduce(x.clone(), async_op=True),
                 dist.all_gather_single(torch.empty(4 * P), x, async_op=True),
                 dist.reduce_scatter_single(torch.empty(1), torch.ones(P), async_op=True)):
        work.get_future().wait()
        work.wait()
        assert work.is_completed()
    # Receive from any source: torch asks the Work for the sender.
    if rank == 0:
        senders = sorted(dist.recv(torch.empty(1)) for _ in range(P - 1))
        assert senders == list(range(1, P)), senders
    else:
        dist.send(torch.ones(1), 0)
    dist.barrier()
    if rank == 0:
        work = dist.irecv(torch.empty(1))
        work.wait()
        assert work._source_rank() == 1 and work.source_rank() == 1   # no C++ deprecation warning
    elif rank == 1:
        dist.send(torch.ones(1), 0)
    objs = [None] * P
    dist.all_gather_object(objs, {"rank": rank})
    assert [o["rank"] for o in objs] == list(range(P))
    lst = [rank, "x"]
    dist.broadcast_object_list(lst, 0)
    assert lst == [0, "x"]
    sub = dist.new_group([1, 2, 3])
    if rank in (1, 2, 3):
        check_registration(sub, [1, 2, 3])
        dist.all_gather_single(torch.empty(3), torch.ones(1), group=sub)
    dist.barrier()


def check_buffer_grad():
    rank, P = dist.get_rank(), dist.get_world_size()
    E, T, H = 2 * P, 6, 4
    buf = mw.Buffer()
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(T, H, generator=gen, requires_grad=True)
    idx = torch.randint(0, E, (T, 2), generator=gen)
    w = torch.rand(T, 2, generator=gen, requires_grad=True)
    for args in ((x, idx, w.detach(), E), (x.detach(), idx, w, E)):
        try:
            buf.dispatch(*args)
            raise AssertionError("Buffer.dispatch accepted a tensor that requires grad")
        except RuntimeError as exc:
            assert "mw.moe.dispatch" in str(exc) and "requires grad" in str(exc), exc
    with torch.no_grad():
        recv_x, _, _, _, handle = buf.dispatch(x, idx, w, E)     # allowed: autograd is off
        y = buf.combine(recv_x, handle)
    try:
        buf.combine(recv_x.clone().requires_grad_(), handle)
        raise AssertionError("Buffer.combine accepted a tensor that requires grad")
    except RuntimeError as exc:
        assert "mw.moe.combine" in str(exc), exc
    # The autograd version (each rank's tokens come back summed once per chosen expert).
    recv_x, _, recv_w, _, handle = mw.moe.dispatch(x, idx, w, E)
    out = mw.moe.combine(recv_x * 2.0, handle)
    out.sum().backward()
    assert x.grad is not None and torch.allclose(out.detach(), y * 2.0), "mw.moe lost the gradient"
    dist.barrier()
    log(f"Buffer.dispatch/combine refuse tensors that require grad (mw.moe works): y {tuple(y.shape)}")


def main():
    dist.init_process_group("multiwrite")
    rank, P = dist.get_rank(), dist.get_world_size()
    assert P == 4, "run on 4 ranks (2 emulated nodes)"
    pg = dist.group.WORLD
    check_registration(pg, list(range(P)))
    wrapped = check_rendezvous_hooks()
    log(f"registration OK: _device_types {pg._device_types}, _get_backend(cpu) {type(pg._get_backend(CPU)).__name__}, "
        f"env:// wrapped {wrapped}, DETAIL {DETAIL}")
    assert pg._detail == DETAIL, (pg._detail, DETAIL)
    mesh = check_mesh()
    log("DeviceMesh OK: init_device_mesh('cpu', (2, 2)), all-gather on both dims, DTensor full_tensor")
    n = check_mismatches()
    log(f"mismatch checks OK ({n} cases)")
    exercise_ops(mesh)
    check_buffer_grad()
    assert any("multiwrite process group" in m for m in LOG_RECORDS), LOG_RECORDS[:5]
    dist.destroy_process_group()
    if MPIRUN:
        # The public rendezvous scheme: a second session through init_method="mpi://".
        dist.init_process_group("multiwrite", init_method="mpi://")
        check_registration(dist.group.WORLD, list(range(P)))
        out = torch.empty(P)
        dist.all_gather_single(out, torch.tensor([float(rank)]))
        assert out.tolist() == [float(r) for r in range(P)]
        log("init_method='mpi://' session OK")
        dist.destroy_process_group()
    ours = [w for w in _WARNINGS if w[3] is not None]
    for w in _WARNINGS:
        print(f"[rank {rank}] warning {w[0]} at {w[2]} (multiwrite frame: {w[3]}): {w[1][:200]}", flush=True)
    assert not ours, f"warnings issued from multiwrite code: {ours}"
    print(f"[rank {rank}] {len(_WARNINGS)} warnings in total, none from multiwrite", flush=True)
    if rank == 0:
        print(f"backend registration OK ({'mpirun' if MPIRUN else 'torchrun'}, DETAIL {DETAIL})", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
