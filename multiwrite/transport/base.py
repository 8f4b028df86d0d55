"""The one interface every transport implements (MPI, Gloo): tagged point-to-point byte messages,
small-object collectives for control data, and waits that end in a timeout error, never a hang."""
import time

import numpy as np

from ..errors import MultiwriteError, MultiwriteTimeout


# Polling waits (MULTIWRITE_SPIN_US / MULTIWRITE_SLEEP_MAX_US, validated and applied by
# configure_polling when a group is created; these are the defaults until then).
_SPIN_S = 50e-6
_SLEEP_MIN_S = 1e-5
_SLEEP_MAX_S = 50e-6
_YIELDED_S = 20e-6          # a test() that took this long slept or yielded inside
_UINT8 = np.dtype(np.uint8)  # compared by identity first: comparing with np.uint8 converts it every time


class Request:
    """A pending send or receive. ``test()`` polls; ``wait(timeout_s)`` raises MultiwriteTimeout."""

    description = "request"

    def test(self) -> bool:
        raise NotImplementedError

    def cancel(self) -> None:
        """Give up on a pending receive where the transport can (MPI); elsewhere a no-op."""

    def abandon(self, *, expected: bool = True, unless_previous_over=None) -> None:
        """The operation gave up on this receive (it raised): never waits. A receive whose size was
        not agreed (MPI: probed) leaves an orphan, so its message is drained when it comes;
        ``expected=False``: the caller knows no message will come for it (it is forgotten);
        ``unless_previous_over``: none comes if the message before it from the same source and tag
        had more than this many bytes. Other requests stay as they are."""

    def wait(self, timeout_s: float, what: str = "") -> None:
        wait_polling(self, timeout_s, what)


class CompletedRequest(Request):
    description = "empty message"

    def test(self):
        return True

    def wait(self, timeout_s, what=""):
        return None


def seconds(t):
    """A timeout for messages, to 0.1 s: callers pass what is left of a shared deadline (5.99949 s
    after a first request of the same wait took 0.5 ms), and the limit the user set is what matters."""
    return f"{t:g}" if t < 0.1 else f"{t:.1f}".rstrip("0").rstrip(".")


def configure_polling(spin_s, sleep_max_s):
    """Set how waits poll: busy spin for ``spin_s`` seconds, then sleeps growing to ``sleep_max_s``."""
    global _SPIN_S, _SLEEP_MAX_S
    _SPIN_S, _SLEEP_MAX_S = float(spin_s), float(sleep_max_s)


def wait_polling(req, timeout_s, what=""):
    """Poll ``req.test()`` until done: a short busy spin (low latency when the peer is running), then
    short sleeps. Sleeping rather than yielding matters when ranks outnumber cores: a rank that only
    yields keeps competing for the CPU its peers need to make progress. The sleeps grow to at most
    MULTIWRITE_SLEEP_MAX_US (50 us, like MPI's own idle yield): each poll interval adds to the time an
    arrival waits to be noticed, which is what small operations are made of (200 us doubled the time
    of a 1 KiB all_gather on the 8-rank virtual cluster)."""
    if _test(req, what):
        return
    start = time.monotonic()
    deadline = start + timeout_s
    sleep = 0.0
    while True:
        before = time.monotonic()
        if _test(req, what):
            return
        now = time.monotonic()
        if now > deadline:
            raise MultiwriteTimeout(
                f"{what or 'operation'}: timed out after {seconds(timeout_s)}s waiting for {req.description} "
                f"({waiting_hint(getattr(req, 'peer', None))}; MULTIWRITE_TIMEOUT sets the limit)")
        # A test that took a while already gave the CPU away (Open MPI with mpi_yield_when_idle
        # sleeps inside MPI_Test): sleeping on top of it only delays noticing the arrival (by ~190 us
        # per message on the 8-rank virtual cluster).
        if now - start > _SPIN_S and now - before < _YIELDED_S:
            sleep = min(max(sleep * 2, _SLEEP_MIN_S), _SLEEP_MAX_S)
            time.sleep(sleep)


def waiting_hint(peer):
    """Why a wait for ``peer`` (a rank, or None) may not end. It does not accuse the peer: a rank that
    waits for a message from rank q times out as well when q itself waits for a rank that is gone."""
    if peer is None:
        return "a peer died, hangs, or did not call the same operation"
    return f"rank {peer}, or a rank that rank {peer} waits for, died, hangs, or did not call the same operation"


def _test(req, what):
    """req.test(); a transport error names the operation it belongs to."""
    try:
        return req.test()
    except MultiwriteError as exc:
        if what and not str(exc).startswith(what):
            raise type(exc)(f"{what}: {exc}") from exc
        raise


def wait_all(requests, timeout_s, what=""):
    """Wait for every request against one shared deadline."""
    deadline = time.monotonic() + timeout_s
    for req in requests:
        req.wait(max(deadline - time.monotonic(), 1e-3), what)


class Transport:
    """Point-to-point and control collectives between the ranks of one group.

    Buffers are 1-D C-contiguous ``numpy.uint8`` arrays (views of tensors or shared memory are fine);
    a buffer must stay alive and untouched until its request completes. Tags separate concurrent
    operations; messages with the same (source, tag) arrive in order.
    """

    name = "base"
    #: True when a receive must match the message size exactly (a mismatch is fatal, as in Gloo).
    exact_size_recv = True
    #: True when ``Request.test()`` moves requests forward and completes them (MPI); False when they
    #: complete only inside ``wait()`` (Gloo), so a loop that polls must block on one instead.
    completes_in_test = True
    #: True when ``irecv_any`` works (a receive that matches a message from any rank).
    recv_any_source = False
    rank: int
    size: int
    timeout_s: float

    # -- point to point ----------------------------------------------------------------------
    def isend(self, buf: np.ndarray, dst: int, tag: int) -> Request:
        raise NotImplementedError

    def irecv(self, buf: np.ndarray, src: int, tag: int, *, agreed: bool = True) -> Request:
        """Receive the next message from ``src`` on ``tag`` into ``buf``. ``agreed``: the ranks agreed
        on its size beforehand (the control data or a header said it), so it cannot be larger than
        ``buf``. ``agreed=False``: its size comes from the sender's own arguments and may differ; a
        larger message then fails the request with a MismatchError and is never written past the
        end of ``buf`` (MPI: the message is matched before it is received). Transports whose
        receives must match the size exactly (``exact_size_recv``) ignore it: their callers post a
        receive only once its size is known."""
        raise NotImplementedError

    def irecv_any(self, buf: np.ndarray, tag: int, *, agreed: bool = True) -> Request:
        """Receive a message on ``tag`` from whichever rank sends first (``recv_any_source``); once
        complete, the request's ``source()`` is the sender and ``count()`` the bytes received.
        ``agreed`` as for ``irecv``."""
        raise NotImplementedError(f"the {self.name} transport cannot receive from any source")

    def wait_or_stop(self, req: Request, stop) -> bool:
        """For a service thread: wait for ``req`` until it completes (True) or the threading.Event
        ``stop`` is set (False; the request is cancelled where the transport can cancel, else the
        caller must make it complete, e.g. with a message to itself)."""
        raise NotImplementedError

    def drain(self, src: int, tag: int, nbytes: int, limit: int):
        """Receive and discard the next message of ``nbytes`` from ``src`` on ``tag`` (after a packet
        was refused, so that it does not stay queued). Returns the request, or None when it cannot be
        drained without a buffer larger than ``limit`` bytes (exact-size transports)."""
        raise NotImplementedError

    def discard(self, src: int, tag: int) -> None:
        """The next message from ``src`` on ``tag`` that no receive was made for is not wanted (a peer
        sent a part this rank does not expect): MPI receives it into a scratch buffer when it comes,
        so the sender's send completes; elsewhere nothing."""

    def draining(self) -> bool:
        """Move on the receives of abandoned messages that have come (see ``discard``; MPI) and tell
        whether some are still in progress. Never raises."""
        return False

    def progress(self) -> None:
        """Let pending messages move while this rank computes (call between chunks of work, at most
        every ~1 ms: Open MPI with mpi_yield_when_idle sleeps ~50 us in a call that finds nothing to
        do). MPI moves a large message only inside MPI calls on both sides (rendezvous handshake,
        then fragments), so a rank busy in a long copy or reduction stalls its peers' transfers.
        Gloo progresses on its own threads: nothing to do. Never raises: a failed peer shows up on
        the requests themselves."""

    # -- control collectives (small data) ------------------------------------------------------
    def allgather_obj(self, obj) -> list:
        """Every rank's picklable ``obj``, indexed by rank."""
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def allgather_int64(self, values) -> np.ndarray:
        """Gather a small int64 vector from every rank: returns int64 [size, len(values)]."""
        return np.asarray(self.allgather_obj(np.asarray(values, dtype=np.int64)), dtype=np.int64)

    def survivors_agree(self, limit_s) -> bool:
        """After a failure: make the survivors' pending waits fail at once and wait (at most
        ``limit_s``) until every living rank has joined, so that each can report its own error before
        the launcher ends the job. Only where the transport knows which peers failed (MPI with ULFM,
        ``mpirun --with-ft ulfm``); elsewhere nothing to do (False)."""
        return False

    def split(self, ranks, default_timeout_s=None):
        """A transport over the sub-list ``ranks`` (every rank of this transport must call it).
        ``default_timeout_s``: the limit of waits that give none (a service thread idles that long)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    @staticmethod
    def check_buffer(buf):
        if not isinstance(buf, np.ndarray) or (buf.dtype is not _UINT8 and buf.dtype != _UINT8) or buf.ndim != 1 \
                or not buf.flags.c_contiguous:
            raise TypeError("transport buffers must be 1-D C-contiguous numpy.uint8 arrays")
