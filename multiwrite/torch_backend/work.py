"""Work objects of the backend: ``completed`` for ops that finish before they return (MultiWrite and the
runtime), ``Work`` over delegated Gloo work(s) that completes in Gloo's threads."""
import datetime
import threading

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future


def _no_timeout(timeout):
    return timeout is None or (isinstance(timeout, datetime.timedelta) and timeout.total_seconds() <= 0)


def completed(result):
    """A Work that is already done (ops on MultiWrite finish before they return)."""
    fut = torch.futures.Future()
    fut.set_result(result)
    return _create_work_from_future(fut)


class Work(dist.Work):
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
        futs = [future_of(w) for w in self._inners] if has_futures else [None]
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

    def _source_rank(self) -> int:
        """Sender of a receive from any source (dist.recv(t) without src uses it). Asks the Gloo work
        through ``_source_rank`` (torch's own name for it), never the deprecated ``source_rank``."""
        return self._inners[0]._source_rank()

    source_rank = _source_rank      # overrides torch's deprecated Work.source_rank: no C++ warning

    def result(self):
        return self._result

    def synchronize(self):
        self.wait()


def has_future(work):
    return future_of(work) is not None


def future_of(work):
    """The Work's future, or None for Gloo works that have none (send/recv, reduce_scatter)."""
    if isinstance(work, Work):
        return work._future
    try:
        return work.get_future()
    except RuntimeError:
        return None
