"""Two-part MultiWrite packets on the transport: a 64-byte header message followed, on the same tag,
by the payload message (so payloads land straight in their destination memory, no copy). The header
is built and validated by the C++ core (see docs/core_api.md)."""
import numpy as np

from . import _core
from .errors import MismatchError

HEADER = _core.HEADER_SIZE

# Window ids reserved for the operators; user windows get ids from USER_WINDOW_BASE on.
WIN_ALLGATHER = 1
WIN_DISPATCH = 2
WIN_COMBINE = 3
WIN_BROADCAST = 4
WIN_ALLTOALL = 5
USER_WINDOW_BASE = 1 << 16     # operator ids are op + 256 * dtype code, below this


_OP_NAMES = {WIN_ALLGATHER: "all_gather", WIN_DISPATCH: "dispatch", WIN_COMBINE: "combine",
             WIN_BROADCAST: "broadcast", WIN_ALLTOALL: "all_to_all"}


def describe(window_id):
    """'all_gather of float32' for operator windows (op + 256 * dtype code), 'window N' otherwise."""
    from . import _dtypes
    op, dt = window_id % 256, window_id // 256
    if window_id < USER_WINDOW_BASE and op in _OP_NAMES:
        return f"{_OP_NAMES[op]} of {_dtypes.name(dt)}" if dt else _OP_NAMES[op]
    return f"window {window_id}"


def full_bitmap(n):
    return (1 << n) - 1


def build(out, *, window_id, seq, src_rank, dest_node, dest_bitmap, offset, payload_len):
    _core.build_header(out, window_id=window_id, seq=seq, src_rank=src_rank, dest_node=dest_node,
                       dest_bitmap=dest_bitmap, offset=offset, payload_len=payload_len)
    return out


def check(header, *, what, window_id, seq, src_rank, window_size, num_local_ranks, payload_len=None):
    """Validate a received header against what this operation expects; a mismatch between ranks
    (different sizes, different operation) becomes a MismatchError naming the source rank."""
    info = _core.parse_header(header, window_size=window_size, num_local_ranks=num_local_ranks)
    if info["window_id"] != window_id or info["seq"] != seq or info["src_rank"] != src_rank:
        raise MismatchError(
            f"{what}: rank {src_rank} sent a packet of {describe(info['window_id'])} call #{info['seq']} "
            f"while this rank runs {describe(window_id)} call #{seq} (ranks called different operations "
            f"or dtypes)")
    if payload_len is not None and info["payload_len"] != payload_len:
        raise MismatchError(
            f"{what}: rank {src_rank} sent {info['payload_len']} bytes, this rank expects {payload_len} "
            f"(sizes differ across ranks)")
    return info


class PacketRecv:
    """Receive one two-part packet (header, then payload into ``payload``) from ``src``.

    Transports that tolerate a message of the wrong size (MPI reports truncation) get both receives
    posted at once. Gloo aborts the process on a size mismatch, so there the payload receive is posted
    only after the header has shown the payload length; a wrong length is drained and reported as a
    MismatchError instead.
    """

    description = "packet"

    def __init__(self, group, header, payload, src, tag, what=""):
        self.group, self.header, self.payload, self.src, self.tag = group, header, payload, src, tag
        self.what = what
        self.header_req = group.recv(header, src, tag)
        self.payload_req = None if group.transport.exact_size_recv else group.recv(payload, src, tag)

    def wait(self, timeout_s, what=""):
        import time
        deadline = time.monotonic() + timeout_s
        self.header_req.wait(timeout_s, what)
        if self.payload_req is None:
            self._post_payload(deadline, what)
        self.payload_req.wait(max(deadline - time.monotonic(), 1e-3), what)

    def _post_payload(self, deadline, what):
        import time
        sent = int(self.header[32:40].view(np.uint64)[0])
        if sent != self.payload.nbytes:
            _core.parse_header(self.header)    # a corrupt header is a PacketError, not a drain
            if sent <= 1 << 34:
                scratch = np.empty(sent, dtype=np.uint8)
                self.group.recv(scratch, self.src, self.tag).wait(max(deadline - time.monotonic(), 1e-3), what)
            raise MismatchError(f"{what or self.what}: rank {self.src} sent {sent} bytes, this rank expects "
                                f"{self.payload.nbytes} (sizes differ across ranks)")
        self.payload_req = self.group.recv(self.payload, self.src, self.tag)

    def test(self, timeout_s=None, what=""):
        """Non-blocking: True once header and payload have arrived. With an exact-size transport the
        payload receive is posted here once the header is in (a wrong length is drained, which may
        block up to ``timeout_s``, and raised as in ``wait``)."""
        import time
        if not self.header_req.test():
            return False
        if self.payload_req is None:
            self._post_payload(time.monotonic() + (self.group.timeout_s if timeout_s is None else timeout_s), what)
        return self.payload_req.test()


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
    """Wait; a transport error on a payload (message longer than expected) is a size mismatch."""
    from .errors import MultiwriteError
    try:
        g.wait_all(requests, what)
    except MultiwriteError:
        raise
    except Exception as exc:  # MPI truncation, Gloo size errors
        raise MismatchError(f"{what}: a peer's message does not fit what this rank expects "
                            f"(sizes differ across ranks?): {exc}") from exc


def complete(g, what, recvs, sends, check=None, error=None):
    """Finish the packet exchange of one operation: wait for the receives, validate the headers
    (``check()``), wait for the sends. Returns the first error (``error`` passed in wins), to be shared
    with the node through ``g.node_sync``; a timeout is raised at once (the peers time out too)."""
    from .errors import MultiwriteTimeout
    try:
        wait_checked(g, recvs, what)
        if check is not None:
            check()
        g.wait_all(sends, what)
    except MultiwriteTimeout:
        raise
    except Exception as exc:
        error = error or exc
    return error


# -- chunked packets: one header, then the payload as several messages ---------------------------------
# The header's payload_len is the whole payload (same packet format); the payload follows on the same
# tag as consecutive messages of ``chunk_bytes`` (the last one shorter), so a sender can start the
# link on the first chunk while it still produces the rest. Both sides derive the split from
# payload_len and ``chunk_bytes``, which they must agree on.

CHUNK_TARGET = 256 << 10


def chunk_size(unit_bytes, target=CHUNK_TARGET):
    """Chunk length for payloads made of ``unit_bytes`` units (rows, records): whole units, about
    ``target`` bytes (at least one unit). Sender and receiver derive it from agreed sizes."""
    unit_bytes = max(int(unit_bytes), 1)
    return unit_bytes * max(1, int(target) // unit_bytes)


def poll(requests):
    """Let the transport progress (MPI moves data only inside its calls): test pending requests."""
    for req in requests:
        if not req.test():
            break


def chunk_bounds(nbytes, chunk_bytes):
    """[(begin, end)] byte ranges of the messages of a ``nbytes`` payload in chunks of ``chunk_bytes``."""
    chunk_bytes = max(int(chunk_bytes), 1)
    return [(a, min(a + chunk_bytes, nbytes)) for a in range(0, int(nbytes), chunk_bytes)]


def send_header(g, header, dst, tag, *, window_id, seq, dest_bitmap, payload_len, offset=0):
    """Send the header of a chunked packet to rank ``dst`` on another node (the statistics count the
    whole packet here); the payload follows with ``send_chunk``. Returns the send request."""
    node = g.topo.node_of[dst]
    build(header, window_id=window_id, seq=seq, src_rank=g.rank, dest_node=node, dest_bitmap=dest_bitmap,
          offset=offset, payload_len=payload_len)
    g.stats.add_inter(HEADER + int(payload_len), node)
    return g.transport.isend(header, dst, tag)


def send_chunk(g, chunk, dst, tag):
    """Send the next payload chunk of a packet started with ``send_header``."""
    return g.transport.isend(chunk, dst, tag)


class ChunkedPacketRecv:
    """Receive one chunked packet (header, then the payload in ``chunk_bytes`` messages into
    consecutive slices of ``payload``) from ``src``. Like PacketRecv: on MPI everything is posted at
    once; on an exact-size transport (Gloo) the chunk receives are posted once the header is in, and a
    wrong payload length is drained (chunks as the sender cut them) and raised as a MismatchError.
    ``ready_bytes()`` tells how much of the payload (a prefix) has arrived."""

    description = "chunked packet"

    def __init__(self, group, header, payload, src, tag, chunk_bytes, what=""):
        self.group, self.header, self.payload, self.src, self.tag = group, header, payload, src, tag
        self.chunk_bytes, self.what = int(chunk_bytes), what
        self.bounds = chunk_bounds(payload.nbytes, chunk_bytes)
        self.header_req = group.recv(header, src, tag)
        self.reqs = None if group.transport.exact_size_recv else self._post()
        self.done = 0         # chunks known complete (a prefix)

    def _post(self):
        return [self.group.recv(self.payload[a:b], self.src, self.tag) for a, b in self.bounds]

    def _post_checked(self, timeout_s, what):
        import time
        deadline = time.monotonic() + timeout_s
        sent = int(self.header[32:40].view(np.uint64)[0])
        if sent != self.payload.nbytes:
            _core.parse_header(self.header)    # a corrupt header is a PacketError, not a drain
            if sent <= 1 << 34:
                for a, b in chunk_bounds(sent, self.chunk_bytes):
                    scratch = np.empty(b - a, dtype=np.uint8)
                    self.group.recv(scratch, self.src, self.tag).wait(max(deadline - time.monotonic(), 1e-3), what)
            raise MismatchError(f"{what or self.what}: rank {self.src} sent {sent} bytes, this rank expects "
                                f"{self.payload.nbytes} (sizes differ across ranks)")
        self.reqs = self._post()

    def test(self, timeout_s=None, what=""):
        """Non-blocking progress: True once header and whole payload have arrived."""
        if self.reqs is None:
            if not self.header_req.test():
                return False
            self._post_checked(self.group.timeout_s if timeout_s is None else timeout_s, what)
        if not self.header_req.test():
            return False
        while self.done < len(self.reqs) and self.reqs[self.done].test():
            self.done += 1
        return self.done == len(self.reqs)

    def ready_bytes(self):
        """Bytes of the payload (from its start) known to have arrived (call after ``test``)."""
        if self.reqs is None or not self.header_req.test():
            return 0
        return self.bounds[self.done - 1][1] if self.done else 0

    def wait(self, timeout_s, what=""):
        import time
        deadline = time.monotonic() + timeout_s
        self.header_req.wait(timeout_s, what)
        if self.reqs is None:
            self._post_checked(max(deadline - time.monotonic(), 1e-3), what)
        for req in self.reqs[self.done:]:
            req.wait(max(deadline - time.monotonic(), 1e-3), what)
        self.done = len(self.reqs)
