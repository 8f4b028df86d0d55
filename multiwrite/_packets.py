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
USER_WINDOW_BASE = 1 << 16     # operator ids are op + 256 * dtype code, below this


_OP_NAMES = {WIN_ALLGATHER: "all_gather", WIN_DISPATCH: "dispatch", WIN_COMBINE: "combine",
             WIN_BROADCAST: "broadcast"}


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
            sent = int(self.header[32:40].view(np.uint64)[0])
            if sent != self.payload.nbytes:
                _core.parse_header(self.header)    # a corrupt header is a PacketError, not a drain
                if sent <= 1 << 34:
                    scratch = np.empty(sent, dtype=np.uint8)
                    self.group.recv(scratch, self.src, self.tag).wait(max(deadline - time.monotonic(), 1e-3), what)
                raise MismatchError(f"{what or self.what}: rank {self.src} sent {sent} bytes, this rank expects "
                                    f"{self.payload.nbytes} (sizes differ across ranks)")
            self.payload_req = self.group.recv(self.payload, self.src, self.tag)
        self.payload_req.wait(max(deadline - time.monotonic(), 1e-3), what)


def header_buffers(group, name, count):
    """``count`` reusable 64-byte header buffers (rows of a private array)."""
    return group.private_buffer(name, max(count, 1) * HEADER).reshape(-1, HEADER)


def as_u8(a):
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1)
