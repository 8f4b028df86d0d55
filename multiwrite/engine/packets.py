"""Two-part MultiWrite packets on the transport: a 64-byte header message followed, on the same tag,
by the payload message (so payloads land straight in their destination memory, no copy). The header
is built and validated by the C++ core (see docs/core_api.md)."""
import time

import numpy as np

from .. import _core
from ..errors import MismatchError, MultiwriteError, MultiwriteTimeout

HEADER = _core.HEADER_SIZE

# Window ids reserved for the operators; user windows get ids from USER_WINDOW_BASE on.
WIN_ALLGATHER = 1
WIN_DISPATCH = 2
WIN_COMBINE = 3
WIN_BROADCAST = 4
WIN_ALLTOALL = 5
USER_WINDOW_BASE = 1 << 16     # operator ids are op + 256 * dtype code, below this
#: Largest payload of an unexpected length that a receive drains (exact-size transports need a buffer
#: of the message's size; the length comes from the peer, so the allocation is bounded).
DRAIN_LIMIT = 64 << 20


_OP_NAMES = {WIN_ALLGATHER: "all_gather", WIN_DISPATCH: "dispatch", WIN_COMBINE: "combine",
             WIN_BROADCAST: "broadcast", WIN_ALLTOALL: "all_to_all"}


def describe(window_id):
    """'all_gather of float32' for operator windows (op + 256 * dtype code), 'window N' otherwise."""
    from ..runtime import dtypes as _dtypes
    op, dt = window_id % 256, window_id // 256
    if window_id < USER_WINDOW_BASE and op in _OP_NAMES:
        return f"{_OP_NAMES[op]} of {_dtypes.name(dt)}" if dt else _OP_NAMES[op]
    return f"window {window_id}"


def build(out, *, window_id, seq, src_rank, dest_node, dest_bitmap, offset, payload_len):
    _core.build_header(out, window_id=window_id, seq=seq, src_rank=src_rank, dest_node=dest_node,
                       dest_bitmap=dest_bitmap, offset=offset, payload_len=payload_len)
    return out


def check(header, *, what, window_id, seq, src_rank, window_size, num_local_ranks, payload_len=None):
    """Validate a received header against what this operation expects; a mismatch between ranks
    (different sizes, different operation) becomes a MismatchError naming the source rank.
    ``src_rank`` None: any sender (the caller checks the one in the returned dict)."""
    info = _core.parse_header(header, window_size=window_size, num_local_ranks=num_local_ranks)
    if src_rank is None:      # a receive from any source: the header names the sender
        src_rank = info["src_rank"]
    if info["window_id"] != window_id or info["seq"] != seq or info["src_rank"] != src_rank:
        raise MismatchError(
            f"{what}: rank {src_rank} sent a packet of {describe(info['window_id'])} call #{info['seq']} "
            f"while this rank runs {describe(window_id)} call #{seq} (ranks called different operations "
            f"or dtypes)")
    if payload_len is not None:
        check_payload_len(info, payload_len, what)
    return info


def check_payload_len(info, payload_len, what):
    """MismatchError unless the parsed header ``info`` announces ``payload_len`` bytes (a size
    mismatch between ranks)."""
    if info["payload_len"] != payload_len:
        raise MismatchError(
            f"{what}: rank {info['src_rank']} sent {info['payload_len']} bytes, this rank expects {payload_len} "
            f"(sizes differ across ranks)")


def check_piece(header, *, offset, **expected):
    """``check`` for one piece of a packet sent in pieces (see ``pieces``): also the piece's offset in
    the packet's window must be the one this rank derived from the cuts."""
    info = check(header, **expected)
    if info["offset"] != offset:
        raise MismatchError(f"{expected['what']}: rank {expected['src_rank']} sent a piece at offset "
                            f"{info['offset']}, this rank expects offset {offset}")
    return info


class PacketRecv:
    """Receive one two-part packet (header, then payload into ``payload``) from ``src``.

    Transports that tolerate a message of the wrong size (MPI) get both receives posted at once.
    ``agreed``: the ranks agreed on the packet's size beforehand (a control allgather or a node
    agreement that covers every rank); when not (False), the sender may be on another size or path
    (e.g. a fused header + payload message, see engine/gather.py), so both receives are made with
    ``agreed=False`` (MPI: matched before they are received; a larger message is a MismatchError,
    never written past the buffer). Gloo aborts the process on a size mismatch, so there the payload
    receive is posted only after the header has shown the payload length; a wrong length is drained
    and reported as a MismatchError instead.
    """

    description = "packet"

    def __init__(self, group, header, payload, src, tag, what="", agreed=True):
        self.group, self.header, self.payload, self.src, self.tag = group, header, payload, src, tag
        self.what, self.agreed = what, agreed
        self.header_req = group.recv(header, src, tag, agreed=agreed)
        self.payload_req = None if group.transport.exact_size_recv else group.recv(payload, src, tag, agreed=agreed)

    def abandon(self):
        """The operation gave up on this packet (see Request.abandon): never waits. A payload message
        follows the header only if the header came alone (a sender on the fused path of
        engine/gather.py sends one message) and announced a payload."""
        header, payload = self.header_req, self.payload_req
        header.abandon()
        if payload is None:
            return
        sent = getattr(header, "count", None)
        sent = sent() if sent is not None else None
        if sent is None:                 # the header is not in yet (or a receive that does not tell)
            payload.abandon(unless_previous_over=HEADER)
        elif sent > HEADER:              # one fused message: no payload follows
            payload.abandon(expected=False)
        else:
            expected = True
            if getattr(header, "done", False):
                try:
                    expected = _core.parse_header(self.header)["payload_len"] > 0
                except Exception:
                    pass
            payload.abandon(expected=expected)

    def wait(self, timeout_s, what=""):
        deadline = time.monotonic() + timeout_s
        self.header_req.wait(timeout_s, what)
        if self.payload_req is None:
            self._post_payload(deadline, what)
        self.payload_req.wait(max(deadline - time.monotonic(), 1e-3), what)

    def _post_payload(self, deadline, what):
        info = _core.parse_header(self.header)    # a corrupt header is a PacketError, never a drain
        sent = info["payload_len"]
        if sent != self.payload.nbytes:
            # Drain the payload (bounded: the length comes from the peer) so that it does not stay queued
            drain = self.group.transport.drain(self.src, self.tag, sent, DRAIN_LIMIT) if sent else None
            if drain is not None:
                drain.wait(max(deadline - time.monotonic(), 1e-3), what)
            raise MismatchError(f"{what or self.what}: rank {self.src} sent {sent} bytes, this rank expects "
                                f"{self.payload.nbytes} (sizes differ across ranks)")
        self.payload_req = self.group.recv(self.payload, self.src, self.tag, agreed=self.agreed)

    def test(self, timeout_s=None, what=""):
        """Non-blocking: True once header and payload have arrived. With an exact-size transport the
        payload receive is posted here once the header is in (a wrong length is drained, which may
        block up to ``timeout_s``, and raised as in ``wait``). Gloo's requests complete only inside
        ``wait``: poll this on transports whose ``test`` makes progress (MPI)."""
        if not self.header_req.test():
            return False
        if self.payload_req is None:
            self._post_payload(time.monotonic() + (self.group.timeout_s if timeout_s is None else timeout_s), what)
        return self.payload_req.test()


MAX_PIECES = 8


def pieces(g, rows, row_bytes):
    """Cuts [0, ..., rows] of ``rows`` rows (records) of ``row_bytes`` sent as pieces of about
    ``g.piece_bytes`` (MULTIWRITE_PIECE_KIB, default 2 MiB; at most 8 pieces), each its own packet on
    the same tag, so that the receiver can use the first pieces while the rest is on the wire. Both
    sides derive the same cuts from the row count. One piece on a transport that needs exact-size
    receives (Gloo: a payload's receive is posted after its header, so two pieces from one source
    could not be in flight on the same tag). 2 MiB measured faster than 512 KiB for combine (85.7 /
    90.3 vs 90.4 / 98.4 ms at T=256 on the 2 x 4 virtual cluster) and no slower for dispatch: each
    piece costs a rendezvous round trip in MPI."""
    if g.transport.exact_size_recv:
        return [0, rows]
    n = min(MAX_PIECES, max(1, -(-rows * row_bytes // g.piece_bytes)))
    return [rows * i // n for i in range(n + 1)]


class PieceSender:
    """Sends the pieces of packets with at most ``window`` pieces in flight per destination.

    Open MPI moves concurrent large messages to one peer fragment by fragment in turn, so pieces posted
    all at once would all land at the end; posted a few at a time, they land one after the other and
    the receiver can use the first ones early. ``add(dst, post)`` queues a piece (``post()`` sends it
    and returns its requests); ``pump()`` posts what the window allows and must be called while
    waiting; ``requests`` are the requests posted so far; ``finish()`` posts and waits for the rest.
    """

    def __init__(self, g, window=1):
        from collections import deque
        self.g, self.window, self.requests = g, window, []
        self._queued, self._in_flight = {}, {}
        self._deque = deque

    def add(self, dst, post):
        self._queued.setdefault(dst, self._deque()).append(post)
        self._in_flight.setdefault(dst, [])
        self.pump()

    def pump(self):
        """Post queued pieces where fewer than ``window`` are in flight. Returns True while any piece
        is queued or in flight."""
        busy = False
        for dst, queue in self._queued.items():
            flying = [reqs for reqs in self._in_flight[dst] if not all(q.test() for q in reqs)]
            while queue and len(flying) < self.window:
                reqs = queue.popleft()()
                flying.append(reqs)
                self.requests += reqs
            self._in_flight[dst] = flying
            busy = busy or bool(flying)
        return busy

    def finish(self, what):
        """Post every queued piece (waiting for pieces in flight to make room) and wait for all."""
        while any(self._queued.values()):
            for dst, queue in self._queued.items():
                if queue and len(self._in_flight[dst]) >= self.window:
                    self.g.wait_all(self._in_flight[dst][0], what)
            self.pump()
        self.g.wait_all(self.requests, what)


class Progress:
    """Calls the transport's progress() at most once per ``interval_s`` (between chunks of local work,
    so that rendezvous handshakes and fragments move: Open MPI moves a large message only while both
    ends are inside MPI). Rate-limited because Open MPI run with mpi_yield_when_idle sleeps (~50 us)
    inside every progress call that finds nothing to do: calling it after every chunk of work cost
    combine ~4.5 ms (T=256, 2 x 4 virtual cluster: 95.4 vs 90.8 ms, mean of four interleaved runs)."""

    def __init__(self, transport, interval_s=1e-3):
        self.transport, self.interval_s, self.last = transport, interval_s, 0.0

    def __call__(self):
        now = time.perf_counter()
        if now - self.last >= self.interval_s:
            self.last = now
            self.transport.progress()


def header_buffers(group, name, count):
    """``count`` reusable 64-byte header buffers (rows of a private array)."""
    return group.private_buffer(name, max(count, 1) * HEADER).reshape(-1, HEADER)


def as_u8(a):
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1)


def send(g, header, payload, dst, tag, *, window_id, seq, dest_bitmap, offset=0):
    """Send one two-part packet (header built here, then ``payload``) to rank ``dst`` on another node,
    counting it in the inter-node statistics. Returns the two send requests."""
    node = g.topo.node_of[dst]
    build(header, window_id=window_id, seq=seq, src_rank=g.rank, dest_node=node, dest_bitmap=dest_bitmap,
          offset=offset, payload_len=payload.nbytes)
    g.stats.add_inter(HEADER + payload.nbytes, node)
    return [g.transport.isend(header, dst, tag), g.transport.isend(payload, dst, tag)]


def wait_checked(g, requests, what):
    """Wait for receives. The transports report a message longer than expected as a MismatchError, a
    peer that is gone as a PeerFailure and a timeout as a MultiwriteTimeout; anything else is a
    transport failure, not a mismatch."""
    try:
        g.wait_all(requests, what)
    except MultiwriteError:
        raise
    except Exception as exc:
        raise MultiwriteError(f"{what}: the transport failed: {exc}") from exc


def _first_error(error, step):
    """Run ``step()``: a timeout is raised at once (the peers time out too), another failure is
    returned unless ``error`` (an earlier one) is already set."""
    try:
        step()
    except MultiwriteTimeout:
        raise
    except Exception as exc:
        error = error or exc
    return error


#: After an operation failed on this rank (not a timeout): how long it still lets its own sends and
#: the drains of the messages it abandoned complete before it raises (see ``settle``).
SETTLE_S = 5.0


def settle(g, sends):
    """After a failure (not a timeout): give this rank's ``sends`` and the transport's drains of
    abandoned receives up to SETTLE_S (at most the group's timeout) to complete; never raises. MPI
    moves a large message only while both ends are inside MPI calls: a rank that raised at once and
    then waited for its node in shared memory (node_sync, the next call's node rounds) would stall a
    peer's receive of its data, or the peer's send of a message this rank abandoned, until that peer
    timed out. Messages that have not come are not waited for (orphans are drained later). Nothing to
    do where requests complete on the transport's own threads (Gloo: ``completes_in_test`` False)."""
    t = g.transport
    if not t.completes_in_test:
        return
    deadline = time.monotonic() + min(SETTLE_S, g.timeout_s)
    pending = list(sends)
    while True:
        still = []
        for req in pending:
            try:
                if not req.test():
                    still.append(req)
            except Exception:
                pass          # a failed send: nothing to wait for
        pending = still
        if (not pending and not t.draining()) or time.monotonic() > deadline:
            return
        time.sleep(2e-5)


def finish_sends(g, what, sends, error=None):
    """Wait for the sends (requests, or a PieceSender: its queued pieces are posted first); a timeout
    is raised at once, another failure returned (``error`` passed in wins). After an ``error``, a list
    of requests on MPI is given a bounded time only (``settle``): the peers that disagree raise as
    well and may have abandoned their receive of it (drained at their next transport activity), so
    waiting for the full timeout could turn this rank's error into a MultiwriteTimeout."""
    if isinstance(sends, PieceSender):
        return _first_error(error, lambda: sends.finish(what))
    if error is not None and g.transport.completes_in_test:
        settle(g, sends)
        return error
    return _first_error(error, lambda: g.wait_all(sends, what))


def abandon(requests):
    """Give up on the receives of an operation that raised (Request.abandon: receives whose size was
    not agreed leave orphans on MPI, so their messages are drained when they come and their senders'
    sends complete). Never waits: a message that never comes is not waited for."""
    for req in requests:
        try:
            req.abandon()
        except Exception:
            pass


def complete(g, what, recvs, sends, check=None, error=None):
    """Finish the packet exchange of one operation: wait for the receives, validate the headers
    (``check()``), wait for the sends. Returns the first error (``error`` passed in wins), to be
    shared with the node through ``g.node_sync``; a timeout is raised at once. After a failed receive
    or check, the receives still pending are abandoned (``abandon``) and the sends only get a bounded
    time (``settle``): the peers that disagree raise as well and may have abandoned their receives."""
    def exchange():
        try:
            wait_checked(g, recvs, what)
            if check is not None:
                check()
        except MultiwriteTimeout:
            abandon(recvs)
            raise
        except BaseException:
            abandon(recvs)
            settle(g, sends)
            raise
        g.wait_all(sends, what)
    return _first_error(error, exchange)
