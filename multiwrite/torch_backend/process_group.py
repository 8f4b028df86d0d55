"""The ProcessGroup of the "multiwrite" backend, the backend creator torch calls for every group, and the
groups' teardown at exit.

Every op takes CPU tensors, contiguous or not, sync or ``async_op=True``: the ops on MultiWrite and the
runtime are in native.py, those delegated to Gloo in delegated.py. The world group's multiwrite Group
becomes multiwrite's default group (``mw.Buffer()``, ``mw.all_gather`` work right after init).

How the group fits into torch.distributed (torch 2.13):

* torch's c10d ``Backend`` class cannot be subclassed in Python (it has no Python constructor), so a
  Python backend is a ``ProcessGroup`` subclass, and torch then uses the object the creator returns as
  the group itself: torch registers no per-device backend on it and (under
  ``TORCH_DISTRIBUTED_DEBUG=DETAIL``) cannot wrap it in its ``ProcessGroupWrapper`` (which takes a C++
  Backend). Its ops are the Python methods below, which torch's Python API and the C++ callers
  (functional collectives, DTensor, DDP's reducer) reach through the ProcessGroup's virtual methods.
* So that ``pg._device_types`` is ``[cpu]`` and ``pg._get_backend(torch.device("cpu"))`` works (object
  collectives' device choice, DeviceMesh, FSDP2's allocation query, ``_set_pg_timeout``), the group
  registers its internal Gloo backend -- the one the delegated ops run on, same ranks -- as its CPU
  backend (``ProcessGroup._register_backend``, what torch's own helper calls for C++ backends). A caller
  that runs ops on that Backend object directly gets Gloo's results (the same values) without
  multiwrite's deduplication.
* Argument agreement: before ``broadcast``, ``gather`` and ``scatter`` (ops that cannot see by
  themselves that the ranks passed different sizes or dtypes), and before every collective when
  ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` is set (torch's own checker cannot wrap this group), the ranks
  compare a small signature of their arguments (checks.agree_on_signature): a mismatch raises on every
  rank, before any data is sent.
"""
import datetime
import logging
import threading
import weakref

import torch
import torch.distributed as dist

from .. import _config
from ._torch import BACKEND_NAME
from .checks import agree_on_signature, check_cpu, check_same_dtype, signature
from .delegated import DelegatedOps
from .native import NativeOps
from .transports import open_transport, timeout_seconds

log = logging.getLogger("multiwrite")

_live = weakref.WeakSet()
_sessions = {"count": 0}


class ProcessGroupMultiwrite(NativeOps, DelegatedOps, dist.ProcessGroup):
    """torch.distributed ProcessGroup of the "multiwrite" backend (see the package doc).

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
        # A bad setting is raised by the agreement in open_transport, once every rank has seen it
        try:
            timeout_s = timeout_seconds(timeout)
        except ValueError:
            timeout_s = _config.DEFAULT_TIMEOUT_S
        self._timeout = datetime.timedelta(seconds=timeout_s)
        from ..runtime.group import Group
        # Keys of this init only: torchrun's store outlives destroy_process_group, and torch
        # restarts group names at 0 on re-init, so stale keys of a previous session must not match.
        prefix = f"multiwrite/s{_sessions['count']}"
        transport = open_transport(store, prefix, rank, size, global_ranks, group_id, timeout_s)
        self.mw_group = Group(transport, timeout_s=timeout_s, global_ranks=self._global_ranks or None)
        self.gloo = dist.ProcessGroupGloo(dist.PrefixStore(prefix + "/delegate", store), rank, size,
                                          self._timeout)
        self._closed = False
        # TORCH_DISTRIBUTED_DEBUG=DETAIL: every collective checks its arguments across ranks (see the
        # module doc); read once per group, as torch decides on its wrapper once per group.
        self._detail = dist.get_debug_level() == dist.DebugLevel.DETAIL
        self._register_cpu_backend()
        _live.add(self)
        log.debug("multiwrite process group %s: rank %d of %d, global ranks %s, transport %s, timeout %gs%s",
                  group_id, rank, size, self._global_ranks, self.mw_group.transport.name, timeout_s,
                  ", argument checks on every collective (TORCH_DISTRIBUTED_DEBUG=DETAIL)" if self._detail else "")

    def _register_cpu_backend(self):
        """``_device_types`` = [cpu], ``_get_backend(cpu)`` = the internal Gloo backend (module doc)."""
        kind = dist.ProcessGroup.BackendType.CUSTOM
        try:
            self._set_default_backend(kind)
            self._register_backend(torch.device("cpu"), kind, self.gloo)
        except (AttributeError, RuntimeError, TypeError) as exc:   # another torch: ops work without it
            log.warning("multiwrite: could not register the CPU backend of the process group (%s); "
                        "pg._get_backend(torch.device('cpu')) will fail", exc)

    # -- identity ---------------------------------------------------------------------------------
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

    # -- lifetime ---------------------------------------------------------------------------------
    def shutdown(self):
        if self._closed:
            return
        self._closed = True
        from ..runtime import group as _group
        if _group._default is self.mw_group:
            _group.set_default_group(None)
        try:
            self.gloo.shutdown()
        except Exception as exc:  # noqa: BLE001 - best effort at teardown
            log.debug("multiwrite: shutting down the internal Gloo group failed: %r", exc)
        self.mw_group.close()

    def abort(self):
        self.shutdown()


# -- argument agreement before an op (module doc) -----------------------------------------------------

def _opt(opts, name, default):
    return getattr(opts, name, default) if opts is not None else default


def _root_check(pg, what, root):
    if not 0 <= root < pg._size:
        raise ValueError(f"multiwrite backend: {what}: root {root} is outside the group (size {pg._size})")


def _sig_broadcast(pg, tensors, opts=None):
    root = _opt(opts, "rootRank", 0)
    error = None
    try:
        check_cpu("broadcast", *tensors)
        _root_check(pg, "broadcast", root)
    except (TypeError, ValueError) as exc:
        error = exc
    return signature("broadcast", tensors, root, shapes=pg._detail), error


def _sig_rooted(what, pg, flat, lists, opts):
    """gather (``flat``: inputs, ``lists``: the root's outputs) / scatter (``flat``: outputs,
    ``lists``: the root's inputs): every rank's ``flat`` must agree; the root's list must hold one
    tensor per rank of the same dtype and size."""
    root = _opt(opts, "rootRank", 0)
    error = None
    try:
        nested = [t for lst in lists for t in lst]
        check_cpu(what, *flat, *nested)
        check_same_dtype(what, list(flat) + nested)
        _root_check(pg, what, root)
        if len(flat) != 1:
            raise ValueError(f"multiwrite backend: {what} takes one tensor per rank, got {len(flat)}")
        if pg._rank == root:
            slots = list(lists[0]) if len(lists) == 1 else []
            if len(lists) != 1 or len(slots) != pg._size:
                raise ValueError(f"multiwrite backend: {what}: the root needs a list of {pg._size} tensors "
                                 f"(one per rank), got {len(slots)}")
            if any(t.numel() != flat[0].numel() for t in slots):
                raise ValueError(f"multiwrite backend: {what}: the root's list has tensors of "
                                 f"{sorted({t.numel() for t in slots})} elements, this rank's tensor "
                                 f"{flat[0].numel()}")
    except (TypeError, ValueError) as exc:
        error = exc
    return signature(what, flat, root, shapes=pg._detail), error


def _sig_gather(pg, output_lists, input_list, opts=None):
    return _sig_rooted("gather", pg, input_list, output_lists, opts)


def _sig_scatter(pg, output_list, input_lists, opts=None):
    return _sig_rooted("scatter", pg, output_list, input_lists, opts)


def _flat(lists):
    return [t for lst in lists for t in lst]


#: op method -> (signature of its arguments and this rank's argument error, checked without DETAIL too). Ops that
#: detect disagreement themselves on every rank (the all-gathers, all_to_all: tests/mp/
#: backend_registration.py) are checked only under DETAIL; so are the reductions.
_CHECKED = {
    "broadcast": (_sig_broadcast, True),
    "gather": (_sig_gather, True),
    "scatter": (_sig_scatter, True),
    "barrier": (lambda pg, opts=None: (signature("barrier", []), None), False),
    "allreduce": (lambda pg, tensors, opts=None: (signature(
        "all_reduce", tensors, reduce_op=_opt(opts, "reduceOp", dist.ReduceOp.SUM), shapes=True), None), False),
    "allreduce_coalesced": (lambda pg, tensors, opts=None: (signature(
        "all_reduce_coalesced", tensors, reduce_op=_opt(opts, "reduceOp", dist.ReduceOp.SUM), shapes=True),
        None), False),
    "reduce": (lambda pg, tensors, opts=None: (signature(
        "reduce", tensors, _opt(opts, "rootRank", 0), _opt(opts, "reduceOp", dist.ReduceOp.SUM), shapes=True),
        None), False),
    "allgather": (lambda pg, output_lists, input_list, opts=None: (signature(
        "all_gather", _flat(output_lists), shapes=True), None), False),
    "allgather_coalesced": (lambda pg, output_lists, input_list, opts=None: (signature(
        "all_gather_coalesced", _flat(output_lists), shapes=True), None), False),
    "_allgather_base": (lambda pg, output, input, opts=None: (signature(
        "all_gather_into_tensor", [input], shapes=True), None), False),
    "all_gather_single": (lambda pg, output, input, opts=None: (signature(
        "all_gather_into_tensor", [input], shapes=True), None), False),
    "allgather_into_tensor_coalesced": (lambda pg, outputs, inputs, opts=None: (signature(
        "all_gather_into_tensor_coalesced", inputs, shapes=True), None), False),
    "alltoall_base": (lambda pg, output, input, out_splits, in_splits, opts=None: (signature(
        "all_to_all_single", [input], sizes=False), None), False),
    "all_to_all_single": (lambda pg, output, input, out_splits, in_splits, opts=None: (signature(
        "all_to_all_single", [input], sizes=False), None), False),
    "alltoall": (lambda pg, outputs, inputs, opts=None: (signature(
        "all_to_all", inputs, sizes=False), None), False),
    "reduce_scatter": (lambda pg, outputs, input_lists, opts=None: (signature(
        "reduce_scatter", list(outputs) + _flat(input_lists), reduce_op=_opt(opts, "reduceOp", dist.ReduceOp.SUM),
        shapes=True), None), False),
    "_reduce_scatter_base": (lambda pg, output, input, opts=None: (signature(
        "reduce_scatter_tensor", [input], reduce_op=_opt(opts, "reduceOp", dist.ReduceOp.SUM), shapes=True),
        None), False),
    "reduce_scatter_single": (lambda pg, output, input, opts=None: (signature(
        "reduce_scatter_tensor", [input], reduce_op=_opt(opts, "reduceOp", dist.ReduceOp.SUM), shapes=True),
        None), False),
    "reduce_scatter_tensor_coalesced": (lambda pg, outputs, inputs, opts=None: (signature(
        "reduce_scatter_tensor_coalesced", inputs, reduce_op=_opt(opts, "reduceOp", dist.ReduceOp.SUM),
        shapes=True), None), False),
}
_nesting = threading.local()       # an op that calls another op of the group checks once


def _checked(name, sig, always):
    def op(self, *args, **kwargs):
        base = getattr(super(ProcessGroupMultiwrite, self), name)
        depth = getattr(_nesting, "depth", 0)
        if depth or self._size == 1 or not (always or self._detail):
            return base(*args, **kwargs)
        row, error = sig(self, *args, **kwargs)
        agree_on_signature(self.mw_group, _OP_LABEL.get(name, name), row, error)
        _nesting.depth = depth + 1
        try:
            return base(*args, **kwargs)
        finally:
            _nesting.depth = depth
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"{name}, after the ranks agreed on its arguments (process_group module doc)."
    return op


_OP_LABEL = {"allreduce": "all_reduce", "allreduce_coalesced": "all_reduce_coalesced", "allgather": "all_gather",
             "allgather_coalesced": "all_gather_coalesced", "_allgather_base": "all_gather_into_tensor",
             "all_gather_single": "all_gather_into_tensor", "alltoall_base": "all_to_all_single",
             "alltoall": "all_to_all", "_reduce_scatter_base": "reduce_scatter_tensor",
             "reduce_scatter_single": "reduce_scatter_tensor",
             "allgather_into_tensor_coalesced": "all_gather_into_tensor_coalesced"}

for _name, (_sig, _always) in _CHECKED.items():
    setattr(ProcessGroupMultiwrite, _name, _checked(_name, _sig, _always))
del _name, _sig, _always


def create(dist_opts, pg_opts=None):
    """Backend creator (extended API): builds the ProcessGroup of one torch group."""
    global_ranks = list(dist_opts.global_ranks_in_group or [])
    if not global_ranks:           # a new default group: a new init_process_group session
        _sessions["count"] += 1
    pg = ProcessGroupMultiwrite(dist_opts.store, dist_opts.group_rank, dist_opts.group_size,
                                dist_opts.timeout, global_ranks, dist_opts.group_id)
    if not global_ranks:           # the default (world) group: also multiwrite's default group
        from ..runtime.group import set_default_group
        set_default_group(pg.mw_group)
    return pg


def shutdown_all():
    """At exit: stop the internal Gloo groups' threads before the interpreter goes away (a Gloo worker
    releasing a tensor during finalization aborts the process), then close the multiwrite Groups."""
    for pg in list(_live):
        try:
            pg.shutdown()
        except Exception as exc:  # noqa: BLE001 - best effort at exit
            log.debug("multiwrite: closing %r at exit failed: %r", pg, exc)
