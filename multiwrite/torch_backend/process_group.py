"""The ProcessGroup of the "multiwrite" backend, the backend creator torch calls for every group, and the
groups' teardown at exit.

Every op takes CPU tensors, contiguous or not, sync or ``async_op=True``: the ops on MultiWrite and the
runtime are in native.py, those delegated to Gloo in delegated.py. The world group's multiwrite Group
becomes multiwrite's default group (``mw.Buffer()``, ``mw.all_gather`` work right after init).
"""
import datetime
import weakref

import torch.distributed as dist

from .. import _config
from ._torch import BACKEND_NAME
from .delegated import DelegatedOps
from .native import NativeOps
from .transports import open_transport, timeout_seconds

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
        _live.add(self)

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
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
        self.mw_group.close()

    def abort(self):
        self.shutdown()


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
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
