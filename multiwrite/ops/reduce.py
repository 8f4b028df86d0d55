"""AllReduce, ReduceScatter and Reduce on the multiwrite runtime, node first (what ``dist.all_reduce``,
``dist.reduce_scatter_tensor`` and ``dist.reduce`` run on the "multiwrite" backend).

Notation: P ranks on N nodes, node k has L_k ranks, J = max_k L_k, n elements of s bytes.

**AllReduce** (``all_reduce``):

1. Every rank puts its input into the node's shared memory (nodes of one rank skip this).
2. The buffer is cut into J contiguous *slices* (slice j: elements [n·j//J, n·(j+1)//J)) and every
   slice into N contiguous *units* (unit (j, k): the k-th N-th of slice j). Local rank i of node m
   reduces the slices j ≡ i (mod L_m) over the node's L_m inputs, in local-rank order 0..L_m−1: the
   node's *partial*.
3. Unit (j, k) is *owned* by local rank j mod L_k of node k. The rank that computed slice j on node m
   sends the partial of unit (j, k) to its owner for every other node k (phase 1, a reduce-scatter
   between the ranks of one "rail"); the owner reduces the N node partials in node order 0..N−1
   (AVG: then divides once by P) and sends the result back to the rank of every other node that
   computed slice j there (phase 2, an allgather). Partials and results of one sender for one
   receiver travel as one packet (64-byte header + payload), in pieces on MPI (below).
4. Results land in the node's shared result buffer (owners write their own units); after a node
   synchronisation every rank copies the whole result out.

Inter-node bytes leaving node m: Σ_{k≠m} Σ_j [s·|unit(j,k)| + s·|unit(j,m)|] + 64 per packet piece,
about 2·(N−1)/N · n·s (1.0 × the buffer at N = 2) against 2·(P−1)/P · n·s over a ring's boundary link.
With equal node sizes a node sends L packets to every other node in each phase. One node (N = 1):
no network; nodes of one rank: no shared-memory staging of the input.

**Pieces** (MPI transport, nodes of equal size): a packet of more than a quarter of
MULTIWRITE_PIECE_KIB (512 KiB by default) travels in up to 16 pieces, each with its own header (piece
index and count in it), one piece in flight per destination; the owner reduces piece i over the
nodes as soon as every node's piece i is in and sends its result on while the later pieces are on
the wire, so phase 2 overlaps phase 1. On the 2 x 2 virtual cluster at 1 Gbit/s an all_reduce of
16-64 MiB of float32 took 1.18-1.26 x the bound (0.74-0.78 x the faster of MPI and Gloo), a
reduce_scatter 1.21-1.24 x (0.37-0.39 x). Gloo and nodes of different sizes: one piece.

**ReduceScatter** (``reduce_scatter``): the input holds P chunks of c elements; chunk r is reduced and
lands in rank r's output. Local rank i of node m reduces over its node's inputs the chunks of the ranks
(k, i') of other nodes with i' ≡ i (mod L_m) and sends each partial straight to its rank (one packet);
every rank reduces its own chunk over its node, receives one partial from every other node and reduces
the N partials in node order, piece by piece as they land. Inter-node bytes leaving node m:
(P − L_m)·(c·s + 64 per piece), ≈ (N−1)/N of the buffer.

**Reduce** (``reduce``): the AllReduce above; only the root writes its tensor (the others' are left
unchanged). Same bytes as AllReduce.

**Order and determinism.** Every element's final value is computed by exactly one rank and copied
everywhere else, in a fixed order: (((x_{m,0} ⊕ x_{m,1}) ⊕ ...) ⊕ x_{m,L_m−1}) on each node m, then
((p_0 ⊕ p_1) ⊕ ...) ⊕ p_{N−1} over the nodes. The result depends only on the inputs and the placement
of the ranks on nodes: bitwise identical on every rank, from run to run, and between ``all_reduce``,
``reduce_scatter`` and ``reduce`` (an element gets the same value from each). Integer, boolean,
MIN/MAX and bitwise results are exact, so equal to any other implementation's (Gloo's); floating sums
and products differ from Gloo's ring only by rounding (another order). float16 and bfloat16 SUM, AVG
and PRODUCT are accumulated in float32 within each step (node partial, owner) and rounded once per
step; every other dtype is reduced in its own dtype with torch's elementwise ops.

**Operations and dtypes.** ``op``: "sum", "avg", "product" (or "prod"), "min", "max", "band", "bor",
"bxor", or a ``torch.distributed.ReduceOp``. dtypes: float16, bfloat16, float32, float64, int8, int16,
int32, int64, uint8, bool, complex64, complex128. AVG needs a floating or complex dtype, the bitwise
ops an integer or bool dtype, PRODUCT/MIN/MAX a real dtype (complex: SUM and AVG, as in
torch.distributed); other combinations raise TypeError, PREMUL_SUM a ValueError. Bool SUM is a
logical or, PRODUCT a logical and; integer SUM and PRODUCT wrap around.

**Agreement without an extra round trip.** Every packet header carries the call's signature: the
collective, the reduce op and the dtype in the window id (``_WIN_BASE + 8·collective + op + 256·dtype
code``), the element count (and reduce's root) in the offset field. The ranks of a node compare their
signatures at the node agreement that starts the call. A rank that finds a disagreement (in its node
agreement or a received header) still sends every packet it owes, with the failure bit set in the
destination bitmap (and no payload if none of its pieces went out yet), so that nobody waits; a
receiver takes a packet that is not what it expects off the transport whole, into scratch buffers of
the sizes its headers announce (a payload receive is posted only once its header showed its size:
Open MPI 5 over TCP writes a truncated message of 64 KiB or more past the end of the receive
buffer): in AllReduce every owner hears from every
other node in phase 1 and every rank from every other node in phase 2, in ReduceScatter every rank
from every other node, and the final node synchronisation shares an error among a node's ranks. So a
disagreement fails every rank; the ranks then exchange their signatures (one control allgather, on
this error path only) and every rank raises the same MismatchError naming each rank's call. A missing
peer is a MultiwriteTimeout, a dead one a PeerFailure.

Memory: the node buffers "reduce_in" (L_m · n·s, input staging) and "reduce_out" (n·s, results), and
private buffers of about n·s/L_m (partials, received partials), all grow-only and reused.
"""
import time

import numpy as np

from .. import _core
from ..engine import packets as _packets
from ..errors import MismatchError, MultiwriteError, MultiwriteTimeout, PeerFailure
from ..runtime import dtypes as _dtypes
from ..runtime.group import resolve, tag_for

try:
    import torch
except ImportError:      # the rest of multiwrite works without torch; these operators need it
    torch = None

#: Tag ids (< 64, see tag_for) of the two packet phases. Phase 1 (partials) is shared by every
#: collective of this module, so a rank calling another one of them gets a MismatchError from the
#: headers instead of waiting for packets on another tag.
OP_PARTIAL = 40
OP_RESULT = 41
#: Window ids of this module's packets: _WIN_BASE + 8 * collective + reduce op + 256 * dtype code.
_WIN_BASE = 32
ALL_REDUCE, REDUCE_SCATTER, REDUCE = 0, 1, 2
_COLLECTIVES = ("all_reduce", "reduce_scatter", "reduce")
OPS = ("sum", "avg", "product", "min", "max", "band", "bor", "bxor")
SUM, AVG, PRODUCT, MIN, MAX, BAND, BOR, BXOR = range(8)
_ALIASES = {"prod": PRODUCT, "mul": PRODUCT, "bitwise_and": BAND, "bitwise_or": BOR, "bitwise_xor": BXOR}
#: Destination bitmap of a packet: bit 0 always (the header format wants a nonzero bitmap), bit 1 when
#: the sender's side of the call failed (the packet then has no payload).
_OK, _FAILED = 1, 3
_N_BITS = 48                       # the offset field: n | (root + 1) << 48
SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                    "bool", "complex64", "complex128")
_CHUNK = 1 << 16                   # elements per step of a reduction (keeps the operands in cache)


# -- arguments ----------------------------------------------------------------------------------------
def op_code(op) -> int:
    """The reduce operation as an index into OPS: a name ("sum", "avg", "product"/"prod", "min", "max",
    "band", "bor", "bxor"), a ``torch.distributed.ReduceOp`` (or its ``RedOpType``), or an index."""
    if isinstance(op, (int, np.integer)) and not hasattr(op, "name"):
        if 0 <= int(op) < len(OPS):
            return int(op)
        raise ValueError(f"reduce op {op} is not one of 0..{len(OPS) - 1} ({', '.join(OPS)})")
    inner = getattr(op, "op", op)          # a ReduceOp wraps a RedOpType
    name = (inner if isinstance(inner, str) else str(inner).split(".")[-1]).strip().lower()
    if name == "premul_sum":
        raise ValueError("ReduceOp.PREMUL_SUM is not supported (it is NCCL-only in PyTorch); scale the "
                         "tensor and use SUM")
    if name in OPS:
        return OPS.index(name)
    if name in _ALIASES:
        return _ALIASES[name]
    raise ValueError(f"unknown reduce op {op!r}; one of {', '.join(OPS)}")


def supports(dtype, op) -> bool:
    """Whether these operators reduce ``dtype`` (a torch dtype or its name) with ``op``."""
    try:
        _check_dtype("", _dtype_name(dtype), op_code(op))
    except (TypeError, ValueError):
        return False
    return True


def covers(dtype, op, what="reduction") -> bool:
    """False when ``dtype`` is not one these operators reduce (a caller may fall back to another
    implementation); TypeError/ValueError naming ``what`` when ``op`` is not defined for it (or
    unknown); True otherwise."""
    name = _dtype_name(dtype)
    if name not in SUPPORTED_DTYPES:
        return False
    _check_dtype(what, name, op_code(op))
    return True


def _dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _check_dtype(what, name, rop):
    if name not in SUPPORTED_DTYPES:
        raise TypeError(f"{what}: dtype {name} is not supported (supported: {', '.join(SUPPORTED_DTYPES)})")
    integral = not name.startswith(("float", "bfloat", "complex"))
    if rop in (BAND, BOR, BXOR) and not integral:
        raise TypeError(f"{what}: {OPS[rop].upper()} needs an integer or bool dtype, got {name}")
    if rop == AVG and integral:
        raise TypeError(f"{what}: AVG is not defined for {name} (the average of integers is not an integer); "
                        f"use SUM and divide")
    if rop in (PRODUCT, MIN, MAX) and name.startswith("complex"):
        # (MIN/MAX are undefined; torch.distributed refuses PRODUCT on complex tensors too, and torch's
        # vectorised and scalar complex products round differently, so a product would depend on where
        # an element falls in a slice)
        raise TypeError(f"{what}: {OPS[rop].upper()} is not supported for complex dtypes ({name}); SUM and AVG are")


def _as_torch(x, what, name):
    if torch is None:
        raise ImportError(f"{what} needs torch")
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise TypeError(f"{what}: multiwrite works on CPU tensors; the {name} is on {x.device}")
        if x.is_sparse:
            raise TypeError(f"{what}: the {name} is a sparse tensor")
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"{what}: the {name} must be a torch tensor or a numpy array, got {type(x).__name__}")


def _flat_view(t):
    """A 1-D view of ``t`` with stride 1 over the same memory, or None when ``t`` is not contiguous
    (a tensor of one element counts as contiguous whatever its stride: it gets stride 1 here)."""
    if not t.is_contiguous():
        return None
    f = t.detach().reshape(-1)
    if f.numel() <= 1 and f.stride(0) != 1:
        f = f.as_strided((f.numel(),), (1,))
    return f


def _flat_input(t):
    """A contiguous 1-D view of ``t`` (a copy only when ``t`` is not contiguous)."""
    f = _flat_view(t)
    return f if f is not None else t.detach().contiguous().reshape(-1)


def _write(out, flat):
    """out[...] = flat (any layout of ``out``)."""
    with torch.no_grad():
        dst = _flat_view(out)
        if dst is None:
            out.copy_(flat.view(out.shape))
        elif dst.data_ptr() != flat.data_ptr():
            dst.copy_(flat)


# -- the reduction kernel ---------------------------------------------------------------------------
def _fold(rop, parts, out, divide=0, progress=None):
    """out = ((parts[0] ⊕ parts[1]) ⊕ ...) ⊕ parts[-1], elementwise, left to right; then out /= divide
    (AVG; complex: the real and imaginary parts each). parts: 1-D tensors of out's dtype and length;
    out may be parts[0] itself. float16/bfloat16 SUM/AVG/PRODUCT accumulate in float32 and round once."""
    n = out.numel()
    if n == 0:
        return
    fn = _FNS[rop]
    wide = out.dtype in (torch.float16, torch.bfloat16) and rop in (SUM, AVG, PRODUCT)
    acc_buf = torch.empty(min(n, _CHUNK), dtype=torch.float32) if wide else None
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        ps = [p[s:e] for p in parts]
        o = out[s:e]
        if wide:
            acc = acc_buf[:e - s]
            acc.copy_(ps[0])
            for p in ps[1:]:
                fn(acc, p, out=acc)
            if divide:
                acc.div_(divide)
            o.copy_(acc)
        else:
            if len(ps) == 1:
                if o.data_ptr() != ps[0].data_ptr():
                    o.copy_(ps[0])
            else:
                fn(ps[0], ps[1], out=o)
                for p in ps[2:]:
                    fn(o, p, out=o)
            if divide:            # complex: each part divided (so no complex division's rounding)
                (torch.view_as_real(o) if o.is_complex() else o).div_(divide)
        if progress is not None and e < n:        # between chunks (Open MPI moves data only inside MPI)
            progress()


_FNS = {}


def _init_fns():
    if not _FNS and torch is not None:
        _FNS.update({SUM: torch.add, AVG: torch.add, PRODUCT: torch.mul, MIN: torch.minimum, MAX: torch.maximum,
                     BAND: torch.bitwise_and, BOR: torch.bitwise_or, BXOR: torch.bitwise_xor})


# -- one call: its signature and its packets -----------------------------------------------------------
def _describe(coll, rop, dtype_code, n, root):
    unit = "elements per rank" if coll == REDUCE_SCATTER else "elements"
    where = f" to root {root}" if coll == REDUCE else ""
    return f"{_COLLECTIVES[coll]} of {n} {unit} of {_dtypes.name(dtype_code)} ({OPS[rop].upper()}){where}"


class _Call:
    """What one call is (the signature every packet header carries) and how it checks a header."""

    def __init__(self, g, coll, rop, dtype, n, root=-1):
        self.g, self.coll, self.rop, self.dtype, self.n, self.root = g, coll, rop, dtype, n, root
        self.code = _dtypes.code(dtype)
        if n >= 1 << _N_BITS:
            raise ValueError(f"{_COLLECTIVES[coll]}: {n} elements is more than this operator supports")
        self.seq = g.next_seq()
        self.window_id = _WIN_BASE + 8 * coll + rop + 256 * self.code
        self.offset = n | ((root + 1) << _N_BITS if coll == REDUCE else 0)
        self.what = f"{_describe(coll, rop, self.code, n, root)} (call #{self.seq})"
        self.signature = (OP_PARTIAL, self.seq, self.window_id, n, root)

    def vector(self):
        """This call's signature as int64 values (the error path's control allgather)."""
        return np.array([self.coll, self.rop, self.code, self.n, self.root, self.seq], dtype=np.int64)

    def problem(self, info, src, nbytes, piece=0, pieces=1):
        """MismatchError if the header ``info`` received from ``src`` is not piece ``piece`` of ``pieces``
        (``nbytes`` of payload) of this call, else None."""
        wid, off = info["window_id"], info["offset"]
        if info["src_rank"] != src or info["seq"] != self.seq:
            return MismatchError(f"{self.what}: rank {src} sent a packet of its call #{info['seq']} (rank "
                                 f"{info['src_rank']}), this rank expects call #{self.seq} from rank {src} "
                                 f"(ranks called different collectives)")
        if info["dest_bitmap"] & 2:
            return MismatchError(f"{self.what}: rank {src} reports that this call failed on its side (ranks "
                                 f"called it with different arguments)")
        if wid != self.window_id or off != self.offset:
            base = wid % 256 - _WIN_BASE
            if not 0 <= base < 8 * len(_COLLECTIVES):
                theirs = _packets.describe(wid)
            else:
                coll, rop = divmod(base, 8)
                root = (off >> _N_BITS) - 1
                theirs = _describe(coll, rop, wid // 256, off & ((1 << _N_BITS) - 1), root)
            return MismatchError(f"{self.what}: rank {src} called {theirs} (ranks called it with different "
                                 f"arguments)")
        index, count = _piece_of(info)
        if index != piece or count != pieces:
            return MismatchError(f"{self.what}: rank {src} sent piece {index} of {count}, this rank expects piece "
                                 f"{piece} of {pieces}")
        if info["payload_len"] != nbytes:
            return MismatchError(f"{self.what}: rank {src} sent {info['payload_len']} bytes, this rank expects "
                                 f"{nbytes}")
        return None

    def send(self, header, payload, dst, tag, failed, piece=0, pieces=1):
        """Piece ``piece`` of ``pieces`` of a packet to ``dst`` (another node). Before any piece of it
        went out, a failed call sends one piece, the header alone, flagged; once pieces are on their way
        the remaining ones keep their sizes (the receiver has posted them) and carry the flag."""
        bitmap = (_FAILED if failed else _OK) | piece << 8 | pieces << 32
        return _packets.send(self.g, header, payload, dst, tag, window_id=self.window_id, seq=self.seq,
                             dest_bitmap=bitmap, offset=self.offset)

    def poison(self, header, dst, tag):
        """The one header-only piece of a packet this rank cannot send (see send)."""
        return self.send(header, _empty(0), dst, tag, True)


def _piece_of(info):
    """(piece, pieces) of a received header: bits 8..31 and 32..63 of its destination bitmap."""
    bitmap = info["dest_bitmap"]
    return (bitmap >> 8) & 0xFFFFFF, bitmap >> 32


#: Pieces of the reductions: a quarter of MULTIWRITE_PIECE_KIB (512 KiB by default), at most 16 per
#: packet. On the 2 x 2 virtual cluster (1 Gbit/s) an all_reduce of 16 MiB took 166 ms (1.23 x the
#: bound) with 512 KiB pieces against 214 ms (1.59 x) with 2 MiB ones; 4 MiB: no difference.
PIECE_DIVISOR, MAX_PIECES = 4, 16


def _cuts(g, length, size, single=True):
    """Element cuts [0, ..., length] of a packet of ``length`` elements of ``size`` bytes sent in pieces
    (see PIECE_DIVISOR) on MPI, one piece in flight per destination, so that they land one after the
    other and the receiver reduces and forwards the first while the rest is on the wire (Open MPI moves
    concurrent large messages to one peer fragment by fragment in turn); one piece on an exact-size
    transport (Gloo: a payload's receive is posted after its header) and for packets of several units
    (``single`` False). Both ends derive the same cuts from the length (MULTIWRITE_PIECE_KIB is the
    same on every rank: compared at start-up)."""
    nbytes, piece = length * size, max(1, g.piece_bytes // PIECE_DIVISOR)
    if not single or g.transport.exact_size_recv or nbytes <= piece:
        return [0, length]
    k = min(MAX_PIECES, -(-nbytes // piece))
    return [length * i // k for i in range(k + 1)]


def _wait(req, deadline, what, pump):
    """Wait for ``req``; with ``pump`` (MPI), poll it, calling ``pump()`` between polls (PieceSenders
    post their next pieces), with short sleeps, until the deadline (then MultiwriteTimeout)."""
    if pump is None:
        req.wait(max(deadline - time.monotonic(), 1e-3), what)
        return
    from ..transport.base import seconds, waiting_hint
    start = time.monotonic()
    sleep = 0.0
    while not req.test():
        pump()
        now = time.monotonic()
        if now > deadline:
            raise MultiwriteTimeout(
                f"{what}: timed out after {seconds(deadline - start)}s waiting for {req.description} "
                f"({waiting_hint(getattr(req, 'peer', None))}; MULTIWRITE_TIMEOUT sets the limit)")
        if now - start > 50e-6:
            sleep = min(max(2 * sleep, 10e-6), 50e-6)
            time.sleep(sleep)


class _Incoming:
    """One packet from ``src`` in pieces (``cuts``: element cuts of ``payload``, uint8 with elements of
    ``size`` bytes; ``headers``: one 64-byte row per piece): each piece's header, then its payload straight
    into its place. Piece 0's header is posted at once and its payload once the header has been checked
    (its size is then known: a receive smaller than the message is never posted, see _consume); the
    other pieces once piece 0 showed that the sender's call is this rank's (on MPI with their payloads).
    A packet that does not belong to the call has its payload and every further piece the sender
    announced received into scratch buffers of their sizes, so that nothing stays queued; it is
    reported as a MismatchError (``error``)."""

    def __init__(self, call, headers, payload, size, cuts, src, tag):
        self.call, self.headers, self.payload, self.size, self.cuts = call, headers, payload, size, cuts
        self.src, self.tag = src, tag
        self.k = len(cuts) - 1
        self.reqs = []            # [header request, payload request or None] per posted piece
        self.checked = 0          # pieces whose header has been checked
        self.error = None
        self.closed = False       # piece 0 did not fit: nothing more is expected
        self._post(0)

    def piece(self, i):
        return self.payload[self.cuts[i] * self.size:self.cuts[i + 1] * self.size]

    def _post(self, i):
        """Post piece i's header receive; for i >= 1 (posted once piece 0 showed the sender's call is
        this rank's, so the sizes agree) on MPI its payload's too (MPI matches in posting order)."""
        g = self.call.g
        header_req = g.recv(self.headers[i], self.src, self.tag)
        payload_req = None
        if i and not g.transport.exact_size_recv and self.piece(i).nbytes:
            payload_req = g.recv(self.piece(i), self.src, self.tag)
        self.reqs.append([header_req, payload_req])

    def _check(self, i, deadline, pump):
        """Piece i's header is in: check it; piece 0 decides whether the other pieces are posted."""
        g, what = self.call.g, self.call.what
        piece = self.piece(i)
        try:
            info = _core.parse_header(self.headers[i])
        except ValueError as exc:
            info, problem = None, MultiwriteError(f"{what}: rank {self.src} sent a malformed packet header: {exc}")
        else:
            problem = self.call.problem(info, self.src, piece.nbytes, i, self.k)
        if problem is None:
            if self.reqs[i][1] is None and piece.nbytes:        # now that its size is known to fit
                self.reqs[i][1] = g.recv(piece, self.src, self.tag)
            if i == 0:           # after piece 0's payload: receives match messages in posting order
                for j in range(1, self.k):
                    self._post(j)
            return
        self.error = self.error or problem
        if i > 0:       # its payload was posted with the size the sender announced for it in piece 0
            return
        self.closed = True
        if info is None or not self._consume(info["payload_len"], deadline, pump):
            return
        for _ in range(_piece_of(info)[1] - 1):     # the sender's other pieces, as it announced them
            header = np.empty(_packets.HEADER, dtype=np.uint8)
            _wait(g.recv(header, self.src, self.tag), deadline, what, pump)
            try:
                nbytes = _core.parse_header(header)["payload_len"]
            except ValueError:
                return
            if not self._consume(nbytes, deadline, pump):
                return

    def _consume(self, sent, deadline, pump):
        """Take a payload of ``sent`` bytes that does not fit off the transport, into a buffer of its
        size: a receive into a smaller one is not safe (Open MPI 5 over TCP writes a truncated message
        of 64 KiB or more past the end of the receive buffer). False when it is too large to drain
        (DRAIN_LIMIT): nothing more is then received from that sender in this call."""
        if sent == 0:
            return True
        if sent > _packets.DRAIN_LIMIT:
            return False
        _wait(self.call.g.recv(np.empty(sent, dtype=np.uint8), self.src, self.tag), deadline, self.call.what, pump)
        return True

    def _header_failed(self, j, exc):
        """The receive of piece j's header failed (not a timeout): give up on this packet."""
        self.error = self.error or exc
        self.closed = True
        for header_req, payload_req in self.reqs[j:]:
            for req in (payload_req, header_req):
                if req is not None:
                    req.cancel()

    def poll(self, deadline):
        """Without waiting (MPI): check the headers that have arrived, so that the pieces they let
        post are posted while this rank does other work (a sender's next piece waits for them)."""
        while not self.closed and self.checked < self.k:
            j = self.checked
            try:
                if not self.reqs[j][0].test():
                    return
            except (MultiwriteTimeout, PeerFailure):
                raise
            except MultiwriteError as exc:
                self._header_failed(j, exc)
                return
            self._check(j, deadline, None)
            self.checked = j + 1

    def wait_piece(self, i, deadline, pump=None):
        """Wait until piece ``i`` has landed; False if it will not (the packet did not fit). Timeouts and
        dead peers are raised; other errors are kept in ``error``."""
        what = self.call.what
        while self.checked <= i and not self.closed:
            j = self.checked
            try:
                _wait(self.reqs[j][0], deadline, what, pump)
            except (MultiwriteTimeout, PeerFailure):
                raise
            except MultiwriteError as exc:     # e.g. a longer message than a header (another collective)
                self._header_failed(j, exc)
                return False
            if self.checked == j and not self.closed:      # (unless the pump's poll() checked it)
                self._check(j, deadline, pump)
                self.checked = j + 1
        if self.closed:
            return False
        payload_req = self.reqs[i][1]
        if payload_req is not None:
            self.reqs[i][1] = None      # waited once only (a Gloo request's second wait waits for another)
            try:
                _wait(payload_req, deadline, what, pump)
            except (MultiwriteTimeout, PeerFailure):
                raise
            except MultiwriteError as exc:
                self.error = self.error or exc
        return True

    def finish(self, deadline, pump=None):
        """Wait for every piece; returns ``error``."""
        for i in range(self.k):
            if not self.wait_piece(i, deadline, pump):
                break
        return self.error


def _keep_first(error, step, what):
    """Run ``step()``; a timeout or a dead peer is raised at once (the peers see it too), another failure
    is returned unless ``error`` is already set (as a MultiwriteError: node_sync shares an error's class
    with the node's ranks, and only a MismatchError makes them exchange signatures, see _explain)."""
    try:
        step()
    except (MultiwriteTimeout, PeerFailure):
        raise
    except MultiwriteError as exc:
        error = error or exc
    except Exception as exc:  # noqa: BLE001 - shared with the node, then raised
        error = error or MultiwriteError(f"{what}: {type(exc).__name__}: {exc}")
    return error


def _try(error, fn, what):
    """(fn(), error) where fn ran without failing, else (None, the first error): see _keep_first."""
    box = []
    error = _keep_first(error, lambda: box.append(fn()), what)
    return (box[0] if box and error is None else None), error


def _finish_all(call, incoming, error, pump=None, deadline=None):
    """Receive every packet of ``incoming`` (all of them, whatever fails: their senders must not be left
    waiting and no message may stay queued); returns the first error."""
    deadline = deadline or time.monotonic() + call.g.timeout_s
    for pkt in incoming:
        error = _keep_first(error, lambda: _raise(pkt.finish(deadline, pump)), call.what)
    return error


def _raise(error):
    if error is not None:
        raise error


def _explain(g, call, error):
    """The error path: every rank of the group raises here for a disagreement (see the module doc), so
    they exchange their signatures and raise one MismatchError naming every rank's call. If the
    exchange itself fails (a peer raised something else), the original error."""
    from ..engine.control import allgather_int64
    try:
        table = allgather_int64(g, call.vector(), f"{call.what}: exchanging signatures after a mismatch")
    except MultiwriteError:
        return error
    groups = {}
    for r, row in enumerate(table):
        coll, rop, code, n, root, seq = (int(v) for v in row)
        if 0 <= coll < len(_COLLECTIVES) and 0 <= rop < len(OPS):
            key = _describe(coll, rop, code, n, root) + (f" as its call #{seq}" if seq != call.seq else "")
        else:
            key = "something else"
        groups.setdefault(key, []).append(r)
    if len(groups) < 2:
        return error
    parts = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {_ranks(rs)}: {key}" for key, rs in groups.items())
    return MismatchError(f"{call.what}: ranks called it with different arguments: {parts}")


def _ranks(rs):
    out, i = [], 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        out.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return ",".join(out)


class _State:
    """Per-group state: the node input buffer as last grown (see _stage_inputs)."""

    def __init__(self):
        self.inbuf = None


def _region(nbytes):
    return (nbytes + 63) & ~63


def _view(u8, dtype):
    """uint8 numpy array -> 1-D torch tensor of ``dtype`` over the same memory."""
    t = torch.from_numpy(u8)
    return t.view(dtype) if dtype != torch.uint8 else t


def _stage_inputs(g, call, flat, nbytes):
    """Node agreement on the call, with every local rank's input in the node buffer "reduce_in" (one
    region per local rank) when the node has several ranks. The input is written before the agreement
    when the buffer is already large enough (the agreement's barrier then also says that every input
    is in); otherwise after it, followed by one more node barrier. Returns (local inputs as tensors or
    None, MismatchError or None)."""
    topo = g.topo
    L, me = topo.local_size, topo.local_rank
    st = g.extension("ops.reduce", _State)
    region = _region(nbytes)
    src = None
    early = False
    if L > 1 and st.inbuf is not None and st.inbuf.nbytes >= L * region:
        src = _view(st.inbuf[me * region:me * region + nbytes], flat.dtype)
        src.copy_(flat)
        early = True
    _, mismatch = g.node_agree(call.what, call.signature, need_bytes=nbytes)
    if mismatch is not None or L == 1:
        return None, mismatch
    # No disagreement: every local rank passed nbytes, and early is the same on all of them
    inbuf = g.node_buffer("reduce_in", L * region)
    grew = inbuf is not st.inbuf
    st.inbuf = inbuf
    if not early or grew:
        _view(inbuf[me * region:me * region + nbytes], flat.dtype).copy_(flat)
        g.node_barrier(call.what)
    g.stats.add_intra(nbytes)
    return [_view(inbuf[i * region:i * region + nbytes], flat.dtype) for i in range(L)], None


def _node_sizes(topo):
    return [len(r) for r in topo.node_ranks]


# -- AllReduce and Reduce -----------------------------------------------------------------------------
def _unit(n, J, N, j, k):
    lo, hi = n * j // J, n * (j + 1) // J
    w = hi - lo
    return lo + w * k // N, lo + w * (k + 1) // N


def _rail_groups(topo, J, js):
    """For each other node k: {peer on node k: [slices j of ``js`` whose rank there is peer]}."""
    sizes = _node_sizes(topo)
    out = {}
    for k in range(topo.num_nodes):
        if k == topo.node:
            continue
        peers = {}
        for j in js:
            peers.setdefault(topo.node_ranks[k][j % sizes[k]], []).append(j)
        out[k] = peers
    return out


def _u8(t):
    """uint8 numpy view of the contiguous 1-D tensor ``t`` (its bytes, no copy)."""
    return t.view(torch.uint8).numpy() if t.numel() else np.empty(0, dtype=np.uint8)


class _Staging:
    """Consecutive pieces of one private buffer (packets that carry several units)."""

    def __init__(self, g, dtype, length):
        s = torch.empty(0, dtype=dtype).element_size()
        self.buf = _view(g.private_buffer("reduce_stage", max(length * s, 1))[:length * s], dtype)
        self.used = 0

    def take(self, length):
        t = self.buf[self.used:self.used + length]
        self.used += length
        return t


class _Pump:
    """While a rank waits or reduces: post the PieceSenders' next pieces (MPI; their test() also moves
    Open MPI's transfers), at most every ``interval_s`` from inside a reduction. On an exact-size
    transport (Gloo) every packet is one piece, posted at once: nothing to pump, ``wait`` is None."""

    def __init__(self, g, *senders, interval_s=1e-3):
        self.senders = senders
        self.wait = None if g.transport.exact_size_recv else self.pump
        self.progress = _packets.Progress(g.transport) if g.transport.exact_size_recv else self.tick
        self.interval_s, self.last = interval_s, 0.0
        self.boxes, self.deadline = (), None     # incoming packets to poll() (their next pieces posted)

    def pump(self):
        for sender in self.senders:
            sender.pump()
        for box in self.boxes:
            box.poll(self.deadline)

    def tick(self):
        now = time.perf_counter()
        if now - self.last >= self.interval_s:
            self.last = now
            self.pump()


def _header_rows(g, name, cuts_list):
    """64-byte header rows, one per piece of every packet of ``cuts_list``: a list of rows per packet."""
    rows = _packets.header_buffers(g, name, sum(len(c) - 1 for c in cuts_list))
    out, at = [], 0
    for cuts in cuts_list:
        out.append(rows[at:at + len(cuts) - 1])
        at += len(cuts) - 1
    return out


def _all_reduce_flat(g, flat, rop, coll, root, out=None):
    """AllReduce of the contiguous 1-D tensor ``flat`` (see the module doc); the result is written into
    ``out`` (a tensor of flat's numel, any layout; None: not written, as on reduce's other ranks)."""
    _init_fns()
    topo = g.topo
    n, dtype, s = flat.numel(), flat.dtype, flat.element_size()
    nbytes = n * s
    call = _Call(g, coll, rop, _dtype_name(dtype), n, root)
    what = call.what
    N, m, L, me = topo.num_nodes, topo.node, topo.local_size, topo.local_rank
    sizes = _node_sizes(topo)
    J = max(sizes)
    equal = len(set(sizes)) == 1          # then every packet carries one unit and may travel in pieces
    js = list(range(me, J, L))                          # my slices
    inputs, error = _stage_inputs(g, call, flat, nbytes)
    failed = error is not None
    result = None if failed else _view(g.node_buffer("reduce_out", max(nbytes, 1))[:nbytes], dtype)
    groups = [(k, peer, jl) for k, peers in _rail_groups(topo, J, js).items() for peer, jl in peers.items()]
    tag1, tag2 = tag_for(OP_PARTIAL, call.seq), tag_for(OP_RESULT, call.seq)
    own = {j: _unit(n, J, N, j, m) for j in js}        # my units: their final values are mine to compute
    sender1, sender2 = _packets.PieceSender(g), _packets.PieceSender(g)
    pump = _Pump(g, sender1, sender2)

    def units(jl, k):
        return [_unit(n, J, N, j, k) for j in jl]

    def length(bounds):
        return sum(b - a for a, b in bounds)

    # My node's partials of my slices: the input itself on a node of one rank, else a private buffer,
    # element e of slice j at partial[e + part_at[j]].
    if inputs is None:
        partial, part_at = flat, {j: 0 for j in js}
    else:
        part_at, off = {}, 0
        for j in js:
            lo, hi = n * j // J, n * (j + 1) // J
            part_at[j] = off - lo
            off += hi - lo
        partial = _view(g.private_buffer("reduce_partial", max(off * s, 1))[:off * s], dtype)

    def my_partial(j, a, b):
        return partial[a + part_at[j]:b + part_at[j]]

    recv_len = length(own.values()) * (N - 1)
    received = _view(g.private_buffer("reduce_recv", max(recv_len * s, 1))[:recv_len * s], dtype)
    multi = [(k, jl) for k, _, jl in groups if len(jl) > 1]
    stage = _Staging(g, dtype, sum(2 * length(units(jl, k)) + length(own[j] for j in jl) for k, jl in multi))
    # Per packet (group): the cuts of my own units (phase 1 in, phase 2 out) and of the units of node k
    # (phase 1 out, phase 2 in); both ends derive them from the same lengths.
    cuts_own = [_cuts(g, length(own[j] for j in jl), s, equal and len(jl) == 1) for _, _, jl in groups]
    cuts_k = [_cuts(g, length(units(jl, k)), s, equal and len(jl) == 1) for k, _, jl in groups]
    h_in1, h_out2 = _header_rows(g, "reduce_h0", cuts_own), _header_rows(g, "reduce_h1", cuts_own)
    h_out1, h_in2 = _header_rows(g, "reduce_h2", cuts_k), _header_rows(g, "reduce_h3", cuts_k)

    # Post every first piece: phase 1, the partials of my units from every other node; phase 2, the
    # results of my slices' units from their owners, straight into the node's result buffer.
    incoming1, incoming2, recv_views, landings = [], [], {}, []
    roff = 0
    for gi, (k, peer, jl) in enumerate(groups):
        size = length(own[j] for j in jl)
        o = roff
        for j in jl:
            a, b = own[j]
            recv_views[(k, j)] = received[o:o + b - a]
            o += b - a
        land1 = _empty(size * s) if failed else _u8(received[roff:roff + size])
        roff += size
        incoming1.append(_Incoming(call, h_in1[gi], land1, s, cuts_own[gi], peer, tag1))
        us = units(jl, k)
        if failed:
            land2 = _empty(length(us) * s)
        elif len(jl) == 1:
            land2 = _u8(result[us[0][0]:us[0][1]])
        else:
            tmp = stage.take(length(us))
            landings.append((tmp, us))
            land2 = _u8(tmp)
        incoming2.append(_Incoming(call, h_in2[gi], land2, s, cuts_k[gi], peer, tag2))

    def send_phase1(gi, k, peer, jl):
        """My node's partials of the units (j, k), reduced and queued piece by piece. A reduction that
        fails still sends every piece (flagged): the receiver has posted them."""
        nonlocal error
        us, cuts, rows = units(jl, k), cuts_k[gi], h_out1[gi]
        if len(jl) > 1:             # several units: one piece (cuts [0, length])
            tmp = stage.take(length(us))

            def pack():
                if inputs is not None:
                    for j, (a, b) in zip(jl, us):
                        _fold(rop, [x[a:b] for x in inputs], my_partial(j, a, b), progress=pump.progress)
                torch.cat([my_partial(j, a, b) for j, (a, b) in zip(jl, us)], out=tmp)
            error = _keep_first(error, pack, what)
            sender1.add(peer, lambda: call.send(rows[0], _u8(tmp), peer, tag1, error is not None))
            return
        (a, _), j = us[0], jl[0]
        for i in range(len(cuts) - 1):
            lo, hi = a + cuts[i], a + cuts[i + 1]
            if inputs is not None and error is None:
                error = _keep_first(error, lambda: _fold(rop, [x[lo:hi] for x in inputs], my_partial(j, lo, hi),
                                                         progress=pump.progress), what)
            payload = _u8(my_partial(j, lo, hi))
            sender1.add(peer, lambda i=i, payload=payload: call.send(rows[i], payload, peer, tag1, error is not None,
                                                                     i, len(cuts) - 1))

    # Phase 1: my node's partials of the units other nodes own, reduced and sent piece by piece (one
    # header-only flagged piece each when this rank's call already failed)
    for gi, (k, peer, jl) in enumerate(groups):
        if failed:
            sender1.add(peer, lambda gi=gi, peer=peer: call.poison(h_out1[gi][0], peer, tag1))
        else:
            send_phase1(gi, k, peer, jl)
    failed = error is not None

    def reduce_own():                    # my node's partials of my own units
        if inputs is not None:
            for j in js:
                _fold(rop, [x[own[j][0]:own[j][1]] for x in inputs], my_partial(j, *own[j]), progress=pump.progress)

    if not failed:
        error = _keep_first(error, reduce_own, what)
    deadline = time.monotonic() + g.timeout_s
    if pump.wait is not None:            # phase-2 packets are checked while this rank works on phase 1
        pump.boxes, pump.deadline = incoming2, deadline
    started = [False] * len(groups)      # a phase-2 piece of this packet has gone out

    def send_phase2(gi, piece, payload, pieces):
        peer = groups[gi][1]
        if error is not None and not started[gi]:
            sender2.add(peer, lambda: call.poison(h_out2[gi][0], peer, tag2))
            started[gi] = None           # poisoned: nothing more for this packet
        elif started[gi] is not None:
            started[gi] = True
            sender2.add(peer, lambda: call.send(h_out2[gi][piece], payload, peer, tag2, error is not None, piece,
                                                pieces))

    divide = g.size if rop == AVG else 0
    if equal:
        # One unit per packet: the owner reduces piece i over the nodes as soon as every node's piece i
        # is in, and sends its result on while the next pieces are on the wire.
        j = js[0]
        a, b = own[j]
        cuts = cuts_own[0] if groups else [0, b - a]
        for i in range(len(cuts) - 1):
            lo, hi = a + cuts[i], a + cuts[i + 1]
            if error is None:
                for box in incoming1:
                    error = _keep_first(error, lambda: box.wait_piece(i, deadline, pump.wait), what)
                    error = error or box.error
            if error is None:
                parts = []
                for k in range(N):
                    if k == m:
                        parts.append(my_partial(j, lo, hi))
                    else:
                        parts.append(recv_views[(k, j)][cuts[i]:cuts[i + 1]])
                error = _keep_first(error, lambda: _fold(rop, parts, result[lo:hi], divide, pump.progress), what)
            for gi in range(len(groups)):
                send_phase2(gi, i, _u8(result[lo:hi]) if result is not None else _empty(0), len(cuts) - 1)
        if result is not None:
            g.stats.add_intra((b - a) * s)
    else:
        error = _finish_all(call, incoming1, error, pump.wait, deadline)

        def reduce_nodes():              # the owner's reduction over the nodes, in node order
            for j in js:
                a, b = own[j]
                parts = [my_partial(j, a, b) if k == m else recv_views[(k, j)] for k in range(N)]
                _fold(rop, parts, result[a:b], divide, pump.progress)
                g.stats.add_intra((b - a) * s)

        if error is None:
            error = _keep_first(error, reduce_nodes, what)
        for gi, (k, peer, jl) in enumerate(groups):
            if error is not None or len(jl) == 1:
                payload = _u8(result[own[jl[0]][0]:own[jl[0]][1]]) if error is None else _empty(0)
            else:
                tmp = stage.take(length(own[j] for j in jl))
                torch.cat([result[own[j][0]:own[j][1]] for j in jl], out=tmp)
                payload = _u8(tmp)
            send_phase2(gi, 0, payload, 1)
    error = _finish_all(call, incoming1, error, pump.wait, deadline)     # (the rest, after a failure)
    error = _finish_all(call, incoming2, error, pump.wait, deadline)
    if error is None:
        for tmp, us in landings:
            o = 0
            for a, b in us:
                result[a:b].copy_(tmp[o:o + b - a])
                o += b - a
    error = _keep_first(error, lambda: sender1.finish(what), what)
    error = _keep_first(error, lambda: sender2.finish(what), what)
    _sync(g, call, error)
    if out is not None:
        _write(out, result)


def _empty(nbytes):
    """A receive buffer for a failed call's packet (its payload is not used)."""
    return np.empty(nbytes, dtype=np.uint8)


def _sync(g, call, error):
    """The final node synchronisation: shares ``error`` with the node's ranks; a disagreement becomes
    one MismatchError on every rank (see _explain)."""
    try:
        g.node_sync(call.what, error)
    except MismatchError as exc:
        raise _explain(g, call, exc) from exc


# -- ReduceScatter ---------------------------------------------------------------------------------------
def _reduce_scatter_flat(g, out, flat, c, rop):
    """ReduceScatter of the contiguous 1-D tensor ``flat`` (P·c elements, see the module doc); this
    rank's chunk goes to ``out`` (c elements, any layout). Chunks travel in pieces (MPI): the final
    reduction of piece i runs while the next pieces are on the wire."""
    _init_fns()
    topo = g.topo
    P, N, m, L, me = g.size, topo.num_nodes, topo.node, topo.local_size, topo.local_rank
    dtype, s = flat.dtype, flat.element_size()
    call = _Call(g, REDUCE_SCATTER, rop, _dtype_name(dtype), c)
    what = call.what
    sizes = _node_sizes(topo)
    inputs, error = _stage_inputs(g, call, flat, P * c * s)
    failed = error is not None
    tag = tag_for(OP_PARTIAL, call.seq)
    sender = _packets.PieceSender(g)
    pump = _Pump(g, sender)
    cuts = _cuts(g, c, s)
    # the ranks of other nodes whose chunks this rank reduces over its node, and who reduces mine there
    targets = [r for r in range(P) if topo.node_of[r] != m and topo.local_rank_of[r] % L == me]
    sources = [topo.node_ranks[k][me % sizes[k]] for k in range(N) if k != m]
    if inputs is None:                   # a node of one rank: the partials are the input's chunks
        send_buf = None
    else:
        send_buf = _view(g.private_buffer("reduce_partial", max(len(targets) * c * s, 1))[:len(targets) * c * s],
                         dtype)
    recv_buf = _view(g.private_buffer("reduce_recv", max(N * c * s, 1))[:N * c * s], dtype)
    h_out = _header_rows(g, "reduce_h0", [cuts] * len(targets))
    h_in = _header_rows(g, "reduce_h1", [cuts] * len(sources))
    parts = {k: recv_buf[k * c:(k + 1) * c] for k in range(N)}
    incoming = [_Incoming(call, h_in[i], _empty(c * s) if failed else _u8(parts[topo.node_of[src]]), s, cuts, src, tag)
                for i, src in enumerate(sources)]

    def send_to(ti, r):
        """The partial of rank r's chunk, reduced and queued piece by piece (flagged after a failure:
        the receiver has posted every piece)."""
        nonlocal error
        for i in range(len(cuts) - 1):
            lo, hi = r * c + cuts[i], r * c + cuts[i + 1]
            if inputs is None:
                piece = flat[lo:hi]
            else:
                piece = send_buf[ti * c + cuts[i]:ti * c + cuts[i + 1]]
                if error is None:
                    error = _keep_first(error, lambda: _fold(rop, [x[lo:hi] for x in inputs], piece,
                                                             progress=pump.progress), what)
            sender.add(r, lambda i=i, piece=piece: call.send(h_out[ti][i], _u8(piece), r, tag, error is not None, i,
                                                             len(cuts) - 1))

    for ti, r in enumerate(targets):
        if failed:
            sender.add(r, lambda ti=ti, r=r: call.poison(h_out[ti][0], r, tag))
        else:
            send_to(ti, r)
    failed = error is not None
    r = g.rank
    if not failed:
        own = flat[r * c:(r + 1) * c] if inputs is None else parts[m]
        if inputs is not None:
            error = _keep_first(error, lambda: _fold(rop, [x[r * c:(r + 1) * c] for x in inputs], own,
                                                     progress=pump.progress), what)
        parts[m] = own
    res = _flat_view(out)
    if res is None or (inputs is None and res.numel() and flat.numel()
                       and res.data_ptr() < flat[-1:].data_ptr() + s and flat.data_ptr() < res[-1:].data_ptr() + s):
        res = torch.empty(c, dtype=dtype)        # not contiguous, or overlapping the input being sent
    deadline = time.monotonic() + g.timeout_s
    boxes = sorted(incoming, key=lambda box: topo.node_of[box.src])
    for i in range(len(cuts) - 1):       # piece by piece, as the other nodes' pieces land
        if error is not None:
            break
        for box in boxes:
            error = _keep_first(error, lambda: box.wait_piece(i, deadline, pump.wait), what)
            error = error or box.error
        if error is None:
            lo, hi = cuts[i], cuts[i + 1]
            error = _keep_first(error, lambda: _fold(rop, [parts[k][lo:hi] for k in range(N)], res[lo:hi],
                                                     P if rop == AVG else 0, pump.progress), what)
    error = _finish_all(call, incoming, error, pump.wait, deadline)
    error = _keep_first(error, lambda: sender.finish(what), what)
    _sync(g, call, error)
    _write(out, res)


# -- the public functions -------------------------------------------------------------------------------
def all_reduce(tensor, op="sum", group=None):
    """Reduce ``tensor`` over every rank of the group, in place, like ``dist.all_reduce(tensor, op)``.

    tensor: a CPU torch tensor (any shape and strides) or a writable numpy array, with the same number
    of elements, dtype and ``op`` on every rank; dtypes and ops: see the module doc (float16, bfloat16,
    float32, float64, int8/16/32/64, uint8, bool, complex64/128; SUM, AVG, PRODUCT, MIN, MAX, BAND,
    BOR, BXOR). Returns ``tensor``. The result is bitwise identical on every rank.
    Raises TypeError/ValueError for an unsupported dtype or op (before anything is sent), MismatchError
    on every rank when ranks disagree on the size, dtype or op, MultiwriteTimeout when a peer is missing,
    PeerFailure when one is gone.
    """
    g = resolve(group)
    t = _as_torch(tensor, "all_reduce", "tensor")
    rop = op_code(op)
    _check_dtype("all_reduce", _dtype_name(t.dtype), rop)
    _all_reduce_flat(g, _flat_input(t), rop, ALL_REDUCE, -1, out=t)
    return tensor


def reduce(tensor, root, op="sum", group=None):
    """Reduce ``tensor`` over every rank of the group into ``tensor`` of rank ``root``, like
    ``dist.reduce(tensor, dst=root, op=op)``; the other ranks' tensors are left unchanged.

    Same tensors, dtypes, ops and errors as ``all_reduce`` (ranks disagreeing on ``root`` get a
    MismatchError too); ValueError for a root outside the group. Returns ``tensor``. Runs as
    ``all_reduce`` (same bytes) with only the root copying the result out.
    """
    g = resolve(group)
    root = int(root)
    if not 0 <= root < g.size:
        raise ValueError(f"reduce: root {root} is outside the group (size {g.size})")
    t = _as_torch(tensor, "reduce", "tensor")
    rop = op_code(op)
    _check_dtype("reduce", _dtype_name(t.dtype), rop)
    _all_reduce_flat(g, _flat_input(t), rop, REDUCE, root, out=t if g.rank == root else None)
    return tensor


def reduce_scatter(output, input, op="sum", group=None):
    """Reduce ``input`` over every rank and scatter it, like ``dist.reduce_scatter_tensor(output, input,
    op)``: rank r's ``output`` gets elements [r·c, (r+1)·c) of the reduction, c = output.numel().

    output: CPU torch tensor or writable numpy array of c elements (any shape and strides); input: P·c
    elements of the same dtype (any shape and strides). Same dtypes and ops as ``all_reduce``; the
    result is the same as ``all_reduce``'s for those elements, bitwise. Returns ``output``.
    Raises TypeError/ValueError for bad arguments (before anything is sent), MismatchError on every
    rank when ranks disagree on c, the dtype or the op, MultiwriteTimeout / PeerFailure for missing or
    dead peers.
    """
    g = resolve(group)
    out = _as_torch(output, "reduce_scatter", "output")
    inp = _as_torch(input, "reduce_scatter", "input")
    if out.dtype != inp.dtype:
        raise TypeError(f"reduce_scatter: output dtype {_dtype_name(out.dtype)} differs from input dtype "
                        f"{_dtype_name(inp.dtype)}")
    rop = op_code(op)
    _check_dtype("reduce_scatter", _dtype_name(inp.dtype), rop)
    c = out.numel()
    if inp.numel() != g.size * c:
        raise ValueError(f"reduce_scatter: input has {inp.numel()} elements, expected group size ({g.size}) x "
                         f"output's {c}")
    _reduce_scatter_flat(g, out, _flat_input(inp), c, rop)
    return output


__all__ = ["all_reduce", "reduce_scatter", "reduce", "op_code", "supports", "covers", "OPS", "SUPPORTED_DTYPES"]
