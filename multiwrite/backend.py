"""The ``"multiwrite"`` torch.distributed backend.

Importing multiwrite registers it; a training script changes one line::

    import multiwrite                              # registers the backend
    dist.init_process_group("multiwrite")         # under torchrun (env://) or mpirun (MPI environment)

What runs where (see docs/backend.md for the table):

* on MultiWrite (multiwrite's operators on the group's transport and node shared memory):
  ``all_gather_into_tensor`` / ``all_gather_single`` / ``_all_gather_base``, ``all_gather`` (uneven
  sizes too, padded to the largest), ``broadcast`` (and everything built on them, e.g.
  ``all_gather_object``, ``broadcast_object_list``, DDP's initial parameter broadcast, FSDP's parameter
  all-gathers);
* on the multiwrite runtime without replication (nothing to deduplicate: every chunk has one
  destination): ``all_to_all_single`` (equal and uneven splits) and ``all_to_all`` (uneven sizes too,
  through one ``all_to_all_single``) -- multiwrite/alltoall.py, shared memory inside a node;
* delegated to an internal ``ProcessGroupGloo`` built from the same store (same ranks, its own key
  prefix): ``all_reduce`` (+ coalesced), ``reduce_scatter_tensor`` / ``reduce_scatter``, ``reduce``,
  ``gather``, ``scatter``, ``barrier``, ``send`` / ``recv``.

Every op takes CPU tensors, contiguous or not (non-contiguous tensors go through a contiguous copy that
is written back when the op completes), sync or ``async_op=True``. Ops on MultiWrite complete before
they return (their Work is already done); delegated ops return a Work that completes in Gloo's
threads, so they overlap with computation. Unsupported combinations (bitwise ops on floating point,
AVG on integers, PREMUL_SUM, non-CPU tensors, mismatched dtypes) raise TypeError/ValueError naming the
op and the dtype, before anything is sent.

Launch and rendezvous:

* torchrun: the usual ``env://``; the multiwrite transport is Gloo over the group's store.
* mpirun (``OMPI_COMM_WORLD_SIZE``/``PMI_SIZE``/... set and ``MASTER_ADDR`` unset): importing
  multiwrite sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` from the MPI
  environment; the first ``init_process_group`` (``env://``) then rendezvouses through MPI: rank 0
  starts a TCPStore on a port the kernel picks (port 0, so no race for a "free" port), broadcasts its
  addresses and port with mpi4py, and every rank connects to the address of rank 0 that it can route
  to (loopback on the same host, else an address on a shared subnet, else rank 0's hostname address;
  ``MULTIWRITE_MASTER_ADDR`` overrides). ``MASTER_ADDR``/``MASTER_PORT`` are set afterwards for other
  libraries. The multiwrite transport is MPI (``MULTIWRITE_TRANSPORT`` overrides: ``gloo`` works too).

Subgroups (``dist.new_group(ranks)``) get a multiwrite Group over exactly those ranks: a Gloo
transport from the subgroup's prefix store, or an MPI communicator from ``MPI_Comm_create_group``.
``group_of(pg)`` returns the multiwrite Group of such a process group, and the world group's Group
becomes multiwrite's default group (``mw.Buffer()``, ``mw.all_gather`` work right after init).
"""
import atexit
import contextlib
import datetime
import os
import threading
import weakref
import zlib

try:
    import torch
    import torch.distributed as dist
except ImportError:  # multiwrite's MPI path works without torch; the backend needs it
    torch = dist = None

from . import _config

BACKEND_NAME = "multiwrite"

# ---------------------------------------------------------------------------------------------------
# MPI environment -> torch.distributed environment
# ---------------------------------------------------------------------------------------------------
_MPI_ENV_KEYS = (  # (rank, size, local rank, local size) per MPI launcher
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),       # MPICH / Intel MPI (Hydra)
    ("PMIX_RANK", "SLURM_NTASKS", "SLURM_LOCALID", None),   # srun --mpi=pmix (local size from MPI)
)


def _mpi_rendezvous_wanted() -> bool:
    """Launched by MPI without torchrun's rendezvous variables (or we did the MPI rendezvous before)."""
    return _config.launched_by_mpi() and ("MASTER_ADDR" not in os.environ or _mpi_state["done"])


def _mpi_env_values():
    for keys in _MPI_ENV_KEYS:
        values = [os.environ.get(k) if k else None for k in keys]
        if values[0] is not None and values[1] is not None:
            return values
    return None


def _set_env_from_mpi_launcher():
    """At import: RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE from the MPI launcher (never overrides)."""
    if not _config.launched_by_mpi() or "MASTER_ADDR" in os.environ:
        return
    values = _mpi_env_values()
    if values is None:
        return          # filled in from mpi4py at the first init_process_group
    for name, value in zip(("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"), values):
        if value is not None:
            os.environ.setdefault(name, value)


_mpi_state = {"done": False}


def _mpi_rendezvous(url, timeout):
    """env:// under mpirun without MASTER_ADDR: a TCPStore on rank 0, found through MPI
    (transport/rendezvous.py: bound to the address the job uses, keys under a per-job secret prefix)."""
    from urllib.parse import parse_qs, urlparse
    try:
        import mpi4py  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("multiwrite: launched by MPI without MASTER_ADDR, so the rendezvous goes "
                           "through MPI, but mpi4py is not installed (pip install mpi4py), or set "
                           "MASTER_ADDR/MASTER_PORT") from exc
    from .transport import rendezvous
    from .transport.mpi import init_mpi
    timeout_s = _timeout_seconds(timeout)
    MPI = init_mpi(timeout_s)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    query = {k: v[-1] for k, v in parse_qs(urlparse(url).query).items()}
    for name, mine in (("rank", rank), ("world_size", size)):
        if name in query and int(query[name]) != mine:
            raise ValueError(f"multiwrite: init_process_group({name}={query[name]}) but MPI says "
                             f"{name}={mine}; under mpirun leave rank/world_size to MPI")
    port = _config._int_setting("MASTER_PORT", 0, 0) if not _mpi_state["done"] else 0
    store, rank, size, addr, port = rendezvous.mpi_store(timeout_s, port)
    for k, v in (("RANK", rank), ("WORLD_SIZE", size)):
        if k in os.environ and os.environ[k] != str(v):
            raise RuntimeError(f"multiwrite: {k}={os.environ[k]} in the environment, but MPI says {v}")
        os.environ[k] = str(v)
    if "LOCAL_RANK" not in os.environ or "LOCAL_WORLD_SIZE" not in os.environ:
        # The launcher did not say (set at import from OMPI_COMM_WORLD_LOCAL_RANK etc. otherwise).
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
        os.environ.setdefault("LOCAL_RANK", str(local.Get_rank()))
        os.environ.setdefault("LOCAL_WORLD_SIZE", str(local.Get_size()))
        local.Free()
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    os.environ.setdefault("MULTIWRITE_TRANSPORT", "mpi")
    _mpi_state["done"] = True
    yield store, rank, size
    raise RuntimeError("multiwrite: re-rendezvous through MPI is not supported")


def _install_rendezvous_hook():
    """Route env:// through MPI when launched by mpirun without MASTER_ADDR (else torch's own env://)."""
    import importlib
    _rdzv = importlib.import_module("torch.distributed.rendezvous")   # dist.rendezvous is the function
    handlers = getattr(_rdzv, "_rendezvous_handlers", None)
    if handlers is None or "env" not in handlers:
        if _config.launched_by_mpi() and "MASTER_ADDR" not in os.environ:
            import warnings
            warnings.warn("multiwrite: cannot hook torch's env:// rendezvous in this torch version; "
                          "under mpirun set MASTER_ADDR/MASTER_PORT yourself", RuntimeWarning, stacklevel=3)
        return
    if getattr(handlers["env"], "_multiwrite", False):
        return
    torch_env = handlers["env"]

    def env_or_mpi(url, timeout=datetime.timedelta(minutes=30), **kwargs):
        if _mpi_rendezvous_wanted():
            return _mpi_rendezvous(url, timeout)
        return torch_env(url, timeout=timeout, **kwargs)

    env_or_mpi._multiwrite = True
    handlers["env"] = env_or_mpi


# ---------------------------------------------------------------------------------------------------
# Work objects
# ---------------------------------------------------------------------------------------------------
def _no_timeout(timeout):
    return timeout is None or (isinstance(timeout, datetime.timedelta) and timeout.total_seconds() <= 0)


if dist is not None:
    from torch._C._distributed_c10d import _create_work_from_future

    def _completed(result):
        """A Work that is already done (ops on MultiWrite finish before they return)."""
        fut = torch.futures.Future()
        fut.set_result(result)
        return _create_work_from_future(fut)

    class _Work(dist._Work):
        """A Work over delegated Gloo work(s), with a completion step (copy-back of non-contiguous
        outputs, unpacking) that runs exactly once, before the future completes or wait() returns.

        ``inners``: Gloo Work objects; ``finish()``: the completion step; ``result``: the future value.
        """

        def __init__(self, inners, finish, result, has_futures=True):
            super().__init__()
            self._inners = list(inners)
            self._finish = finish
            self._result = result
            self._lock = threading.Lock()
            self._finished = False
            self._waited = False
            self._future = None
            futs = [_future_of(w) for w in self._inners] if has_futures else [None]
            if all(f is not None for f in futs):
                base = futs[0] if len(futs) == 1 else torch.futures.collect_all(futs)
                self._future = base.then(self._on_done)

        def _run_finish(self):
            with self._lock:
                if not self._finished:
                    if self._finish is not None:
                        self._finish()
                    self._finished = True

        def _on_done(self, fut):
            value = fut.value()      # raises the Gloo error, if any
            if isinstance(value, list) and value and isinstance(value[0], torch.futures.Future):
                for f in value:
                    f.value()
            self._run_finish()
            return self._result

        def _wait_inners(self, timeout=None):
            for w in self._inners:
                if _no_timeout(timeout):
                    w.wait()
                else:
                    w.wait(timeout)
            self._run_finish()
            self._waited = True      # (a Gloo work may flag completion a moment after wait returns)

        def wait(self, timeout=None):
            self._wait_inners(timeout)
            if self._future is not None:
                self._future.wait()      # raises what the completion step raised
            return True

        def get_future(self):
            if self._future is None:
                # Gloo's point-to-point and reduce-scatter works have no future: a helper thread
                # completes one.
                fut = torch.futures.Future()

                def complete():
                    try:
                        self._wait_inners()
                        fut.set_result(self._result)
                    except Exception as exc:  # noqa: BLE001 - delivered through the future
                        fut.set_exception(exc)

                self._future = fut
                threading.Thread(target=complete, name="multiwrite-work-future", daemon=True).start()
            return self._future

        def is_completed(self):
            if self._waited or (self._future is not None and self._future.done()):
                return True
            return all(w.is_completed() for w in self._inners) and (self._finish is None or self._finished)

        def is_success(self):
            return self.is_completed() and self.exception() is None

        def exception(self):
            for w in self._inners:
                exc = w.exception() if hasattr(w, "exception") else None
                if exc is not None:
                    return exc
            return None

        def _source_rank(self):
            """Sender of a receive from any source (dist.recv(t) without src uses it)."""
            return self._inners[0]._source_rank()

        source_rank = _source_rank

        def result(self):
            return self._result

        def synchronize(self):
            self.wait()


# ---------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------
def _op_name(op):
    try:
        return str(op.op).split(".")[-1]
    except AttributeError:
        return str(op).split(".")[-1]


def _is_integral(dtype):
    return not (dtype.is_floating_point or dtype.is_complex)


def _check_reduce(what, op, dtype):
    """Reject reductions PyTorch does not define (a clear error here, before anything is sent)."""
    R = dist.ReduceOp
    name = _op_name(op)
    op = getattr(op, "op", op)       # ReduceOp -> RedOpType (``RedOpType == ReduceOp`` is always False)
    if op == R.PREMUL_SUM:
        raise ValueError(f"multiwrite backend: {what} with ReduceOp.PREMUL_SUM is not supported "
                         f"(it is NCCL-only in PyTorch); scale the tensor and use ReduceOp.SUM")
    if op in (R.BAND, R.BOR, R.BXOR) and not _is_integral(dtype):
        raise TypeError(f"multiwrite backend: {what} with ReduceOp.{name} needs an integer or bool "
                        f"tensor, got {dtype}")
    if op == R.AVG and _is_integral(dtype):
        raise TypeError(f"multiwrite backend: {what} with ReduceOp.AVG is not defined for {dtype} "
                        f"(the average of integers is not an integer); use ReduceOp.SUM and divide")


def _check_cpu(what, *tensors):
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"multiwrite backend: {what} expects tensors, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise TypeError(f"multiwrite backend: {what} supports CPU tensors only, got a tensor on {t.device}")
        if t.is_sparse:
            raise TypeError(f"multiwrite backend: {what} does not support sparse tensors")


def _check_same_dtype(what, tensors):
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"multiwrite backend: {what} needs tensors of one dtype, got "
                        f"{sorted(str(d) for d in dtypes)}")


class _Contig:
    """Contiguous stand-ins for tensors; ``write_back()`` copies results into non-contiguous outputs."""

    def __init__(self):
        self.pairs = []

    def __call__(self, t, output=False):
        if t.is_contiguous():
            return t
        c = t.contiguous()
        if output:
            self.pairs.append((t, c))
        return c

    def write_back(self):
        with torch.no_grad():
            for t, c in self.pairs:
                t.copy_(c)

    @property
    def needed(self):
        return bool(self.pairs)


@contextlib.contextmanager
def _gloo_errors(what, dtype=None):
    """Gloo rejects some combinations synchronously: re-raise naming the op and dtype."""
    try:
        yield
    except RuntimeError as exc:
        kind = f" of {dtype}" if dtype is not None else ""
        raise RuntimeError(f"multiwrite backend: {what}{kind} (delegated to Gloo) failed: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# The process group
# ---------------------------------------------------------------------------------------------------
if dist is not None:

    class ProcessGroupMultiwrite(dist.ProcessGroup):
        """torch.distributed ProcessGroup of the "multiwrite" backend (see the module doc).

        ``mw_group``: the multiwrite Group of these ranks (same rank numbering as this group).
        ``gloo``: the internal ProcessGroupGloo that delegated ops run on.
        """

        def __init__(self, store, rank, size, timeout, global_ranks, group_id):
            super().__init__(rank, size)
            self._rank, self._size = rank, size
            self._store = store
            self._global_ranks = list(global_ranks) if global_ranks else list(range(size))
            self._group_name = str(group_id)
            self._group_desc = ""
            # A bad setting is raised by _agree_through_store, once every rank has seen it
            try:
                timeout_s = _timeout_seconds(timeout)
            except ValueError:
                timeout_s = _config.DEFAULT_TIMEOUT_S
            self._timeout = datetime.timedelta(seconds=timeout_s)
            from .runtime.group import Group
            # Keys of this init only: torchrun's store outlives destroy_process_group, and torch
            # restarts group names at 0 on re-init, so stale keys of a previous session must not match.
            prefix = f"multiwrite/s{_sessions['count']}"
            try:
                kind = _transport_kind(rank, size, list(global_ranks or []))
            except ValueError:
                kind = "gloo"
            _agree_through_store(store, f"{prefix}/g{group_id}", rank, size, kind, timeout_s)
            transport = _make_transport(store, rank, size, list(global_ranks or []), group_id, timeout_s,
                                        prefix + "/transport", kind)
            self.mw_group = Group(transport, timeout_s=timeout_s, global_ranks=self._global_ranks or None)
            self.gloo = dist.ProcessGroupGloo(dist.PrefixStore(prefix + "/delegate", store), rank, size,
                                              self._timeout)
            self._closed = False
            _live.add(self)

        # -- identity ------------------------------------------------------------------------
        def getBackendName(self):
            return BACKEND_NAME

        def setGroupName(self, name):
            self._group_name = name

        def getGroupName(self):
            return self._group_name

        def setGroupDesc(self, desc):
            self._group_desc = desc

        def getGroupDesc(self):
            return self._group_desc

        def _set_group_name(self, name):
            self._group_name = name

        def _set_group_desc(self, desc):
            self._group_desc = desc

        @property
        def group_name(self):
            return self._group_name

        @property
        def group_desc(self):
            return self._group_desc

        def __repr__(self):
            return (f"ProcessGroupMultiwrite(rank={self._rank}, size={self._size}, "
                    f"ranks={self._global_ranks}, transport={self.mw_group.transport.name})")

        # -- on MultiWrite ------------------------------------------------------------------------
        def all_gather_single(self, output, input, opts=None):
            from .ops.allgather import all_gather
            what = "all_gather_into_tensor"
            _check_cpu(what, output, input)
            if output.dtype != input.dtype:
                raise TypeError(f"multiwrite backend: {what}: output dtype {output.dtype} differs from input "
                                f"dtype {input.dtype}")
            if output.numel() != self._size * input.numel():
                raise ValueError(f"multiwrite backend: {what}: output has {output.numel()} elements, expected "
                                 f"world_size ({self._size}) x {input.numel()}")
            all_gather(output, input, group=self.mw_group)
            return _completed([output])

        def _allgather_base(self, output, input, opts=None):
            return self.all_gather_single(output, input, opts)

        def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
            for o, i in zip(outputs, inputs):
                self.all_gather_single(o, i, opts)
            return _completed(list(outputs))

        def all_gather_single_coalesced(self, outputs, inputs, opts=None):
            return self.allgather_into_tensor_coalesced(outputs, inputs, opts)

        def allgather(self, output_lists, input_list, opts=None):
            from .ops.allgather import all_gather
            what = "all_gather"
            if len(input_list) != 1 or len(output_lists) != 1:
                raise ValueError(f"multiwrite backend: {what} takes one input tensor and one output list per "
                                 f"process (got {len(input_list)} inputs, {len(output_lists)} output lists)")
            x, outs = input_list[0], list(output_lists[0])
            _check_cpu(what, x, *outs)
            if len(outs) != self._size:
                raise ValueError(f"multiwrite backend: {what}: output list has {len(outs)} tensors, "
                                 f"world size is {self._size}")
            _check_same_dtype(what, [x] + outs)
            if outs[self._rank].numel() != x.numel():
                raise ValueError(f"multiwrite backend: {what}: this rank's output slot has "
                                 f"{outs[self._rank].numel()} elements, its input has {x.numel()}")
            n = max(o.numel() for o in outs)
            src = x.reshape(-1)
            if x.numel() != n:           # uneven sizes: every chunk padded to the largest
                src = torch.zeros(n, dtype=x.dtype)
                src[:x.numel()] = x.reshape(-1)
            gathered = torch.empty(self._size * n, dtype=x.dtype)
            all_gather(gathered, src, group=self.mw_group)
            with torch.no_grad():
                for r, o in enumerate(outs):
                    o.copy_(gathered[r * n:r * n + o.numel()].view(o.shape))
            return _completed(output_lists)

        def allgather_coalesced(self, output_lists, input_list, opts=None):
            for outs, x in zip(output_lists, input_list):
                self.allgather([outs], [x], opts)
            return _completed(output_lists)

        def broadcast(self, tensors, opts=None):
            from .ops.broadcast import broadcast
            root = opts.rootRank if opts is not None else 0
            index = opts.rootTensor if opts is not None else 0
            _check_cpu("broadcast", *tensors)
            broadcast(tensors[index], root, group=self.mw_group)
            with torch.no_grad():
                for i, t in enumerate(tensors):
                    if i != index:
                        t.copy_(tensors[index])
            return _completed(tensors)

        # -- delegated to Gloo ----------------------------------------------------------------
        def _delegate(self, inners, contig, result):
            # Always wrapped: one behaviour for every op (is_completed() is true once the future is,
            # get_future() exists even where Gloo has none, non-contiguous outputs are written back).
            inners = inners if isinstance(inners, (list, tuple)) else [inners]
            return _Work(inners, contig.write_back if contig.needed else None, result)

        def allreduce(self, tensors, opts=None):
            opts = opts or dist.AllreduceOptions()
            _check_cpu("all_reduce", *tensors)
            for t in tensors:
                _check_reduce("all_reduce", opts.reduceOp, t.dtype)
            c = _Contig()
            work = [c(t, output=True) for t in tensors]
            with _gloo_errors(f"all_reduce (ReduceOp.{_op_name(opts.reduceOp)})", tensors[0].dtype):
                inner = self.gloo.allreduce(work, opts)
            return self._delegate(inner, c, tensors)

        def allreduce_coalesced(self, tensors, opts=None):
            opts = opts or dist.AllreduceCoalescedOptions()
            _check_cpu("all_reduce_coalesced", *tensors)
            _check_same_dtype("all_reduce_coalesced", tensors)
            for t in tensors:
                _check_reduce("all_reduce_coalesced", opts.reduceOp, t.dtype)
            c = _Contig()
            work = [c(t, output=True) for t in tensors]
            with _gloo_errors("all_reduce_coalesced", tensors[0].dtype if tensors else None):
                inner = self.gloo.allreduce_coalesced(work, opts)
            return self._delegate(inner, c, tensors)

        def reduce(self, tensors, opts=None):
            opts = opts or dist.ReduceOptions()
            _check_cpu("reduce", *tensors)
            for t in tensors:
                _check_reduce("reduce", opts.reduceOp, t.dtype)
            c = _Contig()
            work = [c(t, output=True) for t in tensors]
            with _gloo_errors(f"reduce (ReduceOp.{_op_name(opts.reduceOp)})", tensors[0].dtype):
                inner = self.gloo.reduce(work, opts)
            return self._delegate(inner, c, tensors)

        def reduce_scatter_single(self, output, input, opts=None):
            opts = opts or dist.ReduceScatterOptions()
            what = "reduce_scatter_tensor"
            _check_cpu(what, output, input)
            if output.dtype != input.dtype:
                raise TypeError(f"multiwrite backend: {what}: output dtype {output.dtype} differs from input "
                                f"dtype {input.dtype}")
            if input.numel() != self._size * output.numel():
                raise ValueError(f"multiwrite backend: {what}: input has {input.numel()} elements, expected "
                                 f"world_size ({self._size}) x {output.numel()}")
            _check_reduce(what, opts.reduceOp, input.dtype)
            c = _Contig()
            o, i = c(output, output=True), c(input)
            with _gloo_errors(f"{what} (ReduceOp.{_op_name(opts.reduceOp)})", input.dtype):
                inner = self.gloo._reduce_scatter_base(o, i, opts)
            return self._delegate(inner, c, [output])

        def _reduce_scatter_base(self, output, input, opts=None):
            return self.reduce_scatter_single(output, input, opts)

        def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
            works = [self.reduce_scatter_single(o, i, opts) for o, i in zip(outputs, inputs)]
            return _Work(works, None, list(outputs), has_futures=all(_has_future(w) for w in works))

        def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
            return self.reduce_scatter_tensor_coalesced(outputs, inputs, opts)

        def reduce_scatter(self, outputs, input_lists, opts=None):
            opts = opts or dist.ReduceScatterOptions()
            what = "reduce_scatter"
            if len(outputs) != 1 or len(input_lists) != 1:
                raise ValueError(f"multiwrite backend: {what} takes one output and one input list per process")
            out, ins = outputs[0], list(input_lists[0])
            _check_cpu(what, out, *ins)
            _check_same_dtype(what, [out] + ins)
            if len(ins) != self._size or any(t.numel() != out.numel() for t in ins):
                raise ValueError(f"multiwrite backend: {what} needs {self._size} input tensors of "
                                 f"{out.numel()} elements each")
            _check_reduce(what, opts.reduceOp, out.dtype)
            c = _Contig()
            o = c(out, output=True)
            with _gloo_errors(f"{what} (ReduceOp.{_op_name(opts.reduceOp)})", out.dtype):
                inner = self.gloo.reduce_scatter([o], [[c(t) for t in ins]], opts)
            return self._delegate(inner, c, [out])

        def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
            opts = opts or dist.AllToAllOptions()
            what = "all_to_all_single"
            _check_cpu(what, output, input)
            if output.dtype != input.dtype:
                raise TypeError(f"multiwrite backend: {what}: output dtype {output.dtype} differs from input "
                                f"dtype {input.dtype}")
            for name, t, splits in (("input", input, input_split_sizes), ("output", output, output_split_sizes)):
                splits = list(splits or [])
                if splits:
                    if len(splits) != self._size or any(s < 0 for s in splits):
                        raise ValueError(f"multiwrite backend: {what}: {name}_split_sizes must have "
                                         f"{self._size} non-negative entries, got {splits}")
                    if sum(splits) != (t.size(0) if t.dim() else 1):
                        raise ValueError(f"multiwrite backend: {what}: {name}_split_sizes sum to "
                                         f"{sum(splits)}, but the {name} has {t.size(0)} rows")
                elif t.dim() == 0 or t.size(0) % self._size:
                    raise ValueError(f"multiwrite backend: {what}: the {name}'s first dimension "
                                     f"({t.size(0) if t.dim() else 'scalar'}) is not divisible by the "
                                     f"world size ({self._size}); pass split sizes")
            from .ops.alltoall import all_to_all_single
            all_to_all_single(output, input, list(output_split_sizes or []) or None,
                              list(input_split_sizes or []) or None, group=self.mw_group)
            return _completed([output])

        def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=None):
            return self.all_to_all_single(output, input, output_split_sizes, input_split_sizes, opts)

        def alltoall(self, outputs, inputs, opts=None):
            what = "all_to_all"
            outputs, inputs = list(outputs), list(inputs)
            if len(outputs) != self._size or len(inputs) != self._size:
                raise ValueError(f"multiwrite backend: {what} needs {self._size} input and output tensors, "
                                 f"got {len(inputs)} and {len(outputs)}")
            _check_cpu(what, *outputs, *inputs)
            _check_same_dtype(what, outputs + inputs)
            flat_in = torch.cat([t.reshape(-1) for t in inputs]) if inputs else torch.empty(0)
            flat_out = torch.empty(sum(t.numel() for t in outputs), dtype=outputs[0].dtype)
            in_splits = [t.numel() for t in inputs]
            out_splits = [t.numel() for t in outputs]

            from .ops.alltoall import all_to_all_single
            all_to_all_single(flat_out, flat_in, out_splits, in_splits, group=self.mw_group)
            with torch.no_grad():
                off = 0
                for t in outputs:
                    t.copy_(flat_out[off:off + t.numel()].view(t.shape))
                    off += t.numel()
            return _completed(outputs)

        def gather(self, output_lists, input_list, opts=None):
            opts = opts or dist.GatherOptions()
            what = "gather"
            _check_cpu(what, *input_list, *[t for outs in output_lists for t in outs])
            _check_same_dtype(what, list(input_list) + [t for outs in output_lists for t in outs])
            c = _Contig()
            outs = [[c(t, output=True) for t in lst] for lst in output_lists]
            ins = [c(t) for t in input_list]
            with _gloo_errors(what, input_list[0].dtype if input_list else None):
                inner = self.gloo.gather(outs, ins, opts)
            return self._delegate(inner, c, output_lists)

        def scatter(self, output_list, input_lists, opts=None):
            opts = opts or dist.ScatterOptions()
            what = "scatter"
            _check_cpu(what, *output_list, *[t for ins in input_lists for t in ins])
            _check_same_dtype(what, list(output_list) + [t for ins in input_lists for t in ins])
            c = _Contig()
            outs = [c(t, output=True) for t in output_list]
            ins = [[c(t) for t in lst] for lst in input_lists]
            with _gloo_errors(what, output_list[0].dtype if output_list else None):
                inner = self.gloo.scatter(outs, ins, opts)
            return self._delegate(inner, c, output_list)

        def barrier(self, opts=None):
            opts = opts or dist.BarrierOptions()
            with _gloo_errors("barrier"):
                return _Work([self.gloo.barrier(opts)], None, [])

        def send(self, tensors, dst, tag=0):
            _check_cpu("send", *tensors)
            c = _Contig()
            work = [c(t) for t in tensors]
            with _gloo_errors("send", tensors[0].dtype):
                inner = self.gloo.send(work, dst, tag)      # Gloo's work keeps the contiguous copy alive
            return _Work([inner], None, tensors, has_futures=False)

        def recv(self, tensors, src, tag=0):
            _check_cpu("recv", *tensors)
            c = _Contig()
            work = [c(t, output=True) for t in tensors]
            with _gloo_errors("recv", tensors[0].dtype):
                inner = self.gloo.recv(work, src, tag)
            return _Work([inner], c.write_back, tensors, has_futures=False)

        def recv_anysource(self, tensors, tag=0):
            _check_cpu("recv", *tensors)
            c = _Contig()
            work = [c(t, output=True) for t in tensors]
            with _gloo_errors("recv (any source)", tensors[0].dtype):
                inner = self.gloo.recv_anysource(work, tag)
            return _Work([inner], c.write_back, tensors, has_futures=False)

        # -- lifetime -------------------------------------------------------------------------
        def shutdown(self):
            if self._closed:
                return
            self._closed = True
            from .runtime import group as _group
            if _group._default is self.mw_group:
                _group.set_default_group(None)
            try:
                self.gloo.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                pass
            self.mw_group.close()

        def abort(self):
            self.shutdown()

    def _has_future(work):
        return _future_of(work) is not None

    def _future_of(work):
        """The Work's future, or None for Gloo works that have none (send/recv, reduce_scatter)."""
        if isinstance(work, _Work):
            return work._future
        try:
            return work.get_future()
        except RuntimeError:
            return None


_live = weakref.WeakSet()


def _shutdown_all():
    """At exit: stop the internal Gloo groups' threads before the interpreter goes away (a Gloo worker
    releasing a tensor during finalization aborts the process), then close the multiwrite Groups."""
    for pg in list(_live):
        try:
            pg.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _timeout_seconds(timeout):
    if os.environ.get("MULTIWRITE_TIMEOUT"):
        return _config.timeout_s()
    if isinstance(timeout, datetime.timedelta) and timeout.total_seconds() > 0:
        return timeout.total_seconds()
    return _config.DEFAULT_TIMEOUT_S


def _transport_kind(rank, size, global_ranks):
    """MULTIWRITE_TRANSPORT, else MPI when launched by MPI with matching ranks, else Gloo."""
    value = os.environ.get("MULTIWRITE_TRANSPORT", "").strip().lower()
    if value:
        if value not in _config.TRANSPORTS:
            raise ValueError(f"MULTIWRITE_TRANSPORT={value!r}: expected one of {_config.TRANSPORTS}")
        return value
    if not _config.launched_by_mpi():
        return "gloo"
    try:
        from mpi4py import MPI
    except ImportError:
        return "gloo"
    world_rank, world_size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    torch_world = dist.get_world_size() if global_ranks else size
    torch_rank = dist.get_rank() if global_ranks else rank
    return "mpi" if (world_rank, world_size) == (torch_rank, torch_world) else "gloo"


def _agree_through_store(store, prefix, rank, size, kind, timeout_s):
    """Every rank of the group compares its transport and the settings that must agree (through the
    group's store, bounded by the timeout) before any transport-specific collective: a rank that
    differs or has a bad setting makes every rank raise, naming the setting, not a hang or a timeout."""
    from .transport import rendezvous
    kind, _, state, error = _config.local_state(kind, timeout_s)
    rendezvous.store_allgather_agree(dist.PrefixStore(prefix, store), "agree", rank, size, state, timeout_s,
                                     error, "creating the multiwrite process group")


def _make_transport(store, rank, size, global_ranks, group_id, timeout_s, prefix, kind):
    if kind == "gloo":
        from .transport.gloo import GlooTransport
        return GlooTransport(store, rank, size, timeout_s, prefix=prefix)
    from mpi4py import MPI
    from .transport.mpi import MPITransport
    world = MPI.COMM_WORLD
    torch_rank = dist.get_rank() if global_ranks else rank
    torch_size = dist.get_world_size() if global_ranks else size
    if (world.Get_rank(), world.Get_size()) != (torch_rank, torch_size):
        raise RuntimeError(f"MULTIWRITE_TRANSPORT=mpi, but torch rank/world size ({torch_rank}/{torch_size}) "
                           f"differ from MPI's ({world.Get_rank()}/{world.Get_size()}); use "
                           f"MULTIWRITE_TRANSPORT=gloo")
    if not global_ranks or list(global_ranks) == list(range(world.Get_size())):
        return MPITransport(None, timeout_s)
    # Collective over the members only (torch creates the backend on members only).
    world_group = world.Get_group()
    members = world_group.Incl(list(global_ranks))
    tag = zlib.crc32(str(group_id).encode()) % 32768
    comm = world.Create_group(members, tag)
    members.Free()
    world_group.Free()
    try:
        return MPITransport(comm, timeout_s)
    finally:
        comm.Free()


_sessions = {"count": 0}


def _create(dist_opts, pg_opts=None):
    """Backend creator (extended API): builds the ProcessGroup of one torch group."""
    global_ranks = list(dist_opts.global_ranks_in_group or [])
    if not global_ranks:           # a new default group: a new init_process_group session
        _sessions["count"] += 1
    pg = ProcessGroupMultiwrite(dist_opts.store, dist_opts.group_rank, dist_opts.group_size,
                                dist_opts.timeout, global_ranks, dist_opts.group_id)
    if not global_ranks:           # the default (world) group: also multiwrite's default group
        from .runtime.group import set_default_group
        set_default_group(pg.mw_group)
    return pg


def group_of(pg=None):
    """The multiwrite Group behind a torch ProcessGroup of the "multiwrite" backend (None: the world
    group). Use it with multiwrite's own API: ``mw.Buffer(group=pg)``, ``mw.all_gather(out, x,
    group=group_of(pg))``."""
    if pg is None or (dist is not None and pg is dist.group.WORLD):
        if dist is None or not dist.is_initialized():
            raise RuntimeError("group_of(): torch.distributed is not initialized "
                               "(call dist.init_process_group('multiwrite') first)")
        pg = dist.distributed_c10d._get_default_group()
    if dist is not None and pg is dist.GroupMember.NON_GROUP_MEMBER:
        raise ValueError("group_of(): this rank is not a member of that process group")
    g = getattr(pg, "mw_group", None)
    if g is None:
        backend = dist.get_backend(pg) if dist is not None and dist.is_initialized() else type(pg).__name__
        raise TypeError(f"group_of(): the process group uses the {backend!r} backend, not 'multiwrite'")
    g._check_open()
    return g


def register():
    """Register the "multiwrite" backend (done on import; idempotent)."""
    if dist is None:
        return
    if BACKEND_NAME.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND_NAME, _create, extended_api=True, devices=["cpu"])
    _install_rendezvous_hook()


_set_env_from_mpi_launcher()
register()
if dist is not None:
    atexit.register(_shutdown_all)

__all__ = ["BACKEND_NAME", "ProcessGroupMultiwrite", "group_of", "register"]
