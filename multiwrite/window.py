"""Windows and the one-sided MultiWrite primitive.

A Window is a receive region registered collectively on every rank of a group (like an MPI window or
an RDMA registration). Its memory lives in node shared memory, so the relay of a node can deliver a
packet to every destination rank of that node with local copies.

``win.multi_write(src, ranks, offset)`` writes ``src`` into the window of every rank in ``ranks``:
destinations on the sender's node are written directly through shared memory; for every other node
one packet (header with the destination bitmap + payload) crosses the network to that node's relay,
which fans it out. Destination sets are stateless: any subset, no setup call, nothing cached.
Completion: ``req.wait()`` = local completion (src reusable); remote visibility through per-source
arrival counters (``win.arrivals()``, ``win.wait_from(src, count)``) or the collective ``win.fence()``.
"""
import collections
import itertools
import logging
import threading
import time

import numpy as np

from . import _core, _packets, _tensors, shm
from .engine import tree
from ._config import check_mode
from .errors import MultiwriteError, MultiwriteTimeout, PeerFailure, WindowError
from .group import resolve
from .transport import Request, wait_all

PacketError = _core.PacketError
_log = logging.getLogger("multiwrite")

_TAG_HEADER = 1
_STOP_WINDOW = 0xFFFFFFFF
_REFUSED_OFF = 4       # u32: packets the node relay refused for this window (malformed, out of bounds)
_RELAY_DEAD_OFF = 8    # u32: 1 once the node relay stopped for good (its transport failed)
_RELAY_MSG_OFF = 16    # 48 bytes: why the relay refused its last packet or stopped (NUL-padded)
_RELAY_MSG_LEN = 48
_DRAIN_WAIT_S = 1.0    # how long the relay waits for the parts of a refused packet
_PACKET_TAGS = 1 << 21  # packets k of one (source, relay) pair use tags 2 + 2·(k mod this) (+1)


def _offsets_tag(k):
    """Tag of the destination offsets of the k-th packet from one source to one relay."""
    return 2 + 2 * (k % _PACKET_TAGS)


def _body_tag(k):
    """Tag of the payload of that packet: every packet has tags of its own, so a refused packet's
    unread parts can never be taken for a later packet's."""
    return 3 + 2 * (k % _PACKET_TAGS)
_ARRIVALS_OFF = 64     # u32 [local_size, world_size]: writes arrived per (destination, source), then
#                        u32 [world_size]: packets the relay handled per source (what fence waits for)


def _round64(n):
    return (n + 63) & ~63


class WriteRequest(Request):
    """Local completion of a multi_write: after ``wait()`` the source buffer may be reused."""

    def __init__(self, requests, keep, timeout_s):
        self._requests, self._keep, self._timeout_s = requests, keep, timeout_s
        self.description = "multi_write sends"

    def test(self):
        return all(r.test() for r in self._requests)

    def wait(self, timeout_s=None, what="multi_write"):
        wait_all(self._requests, timeout_s or self._timeout_s, what)
        self._keep = None


class Window:
    """A window of ``nbytes`` bytes on every rank of ``group`` (collective; sizes may differ per rank).

    Attributes: ``nbytes`` (this rank's size), ``sizes`` (every rank's size), ``buffer`` (uint8 numpy
    view of this rank's window), ``tensor(dtype)`` (torch view). Methods: ``multi_write``,
    ``fence``, ``arrivals``, ``wait_from``, ``free``.
    """

    _ids = itertools.count(_packets.USER_WINDOW_BASE)

    def __init__(self, nbytes, group=None):
        g = resolve(group)
        try:
            valid = int(nbytes) == nbytes and nbytes >= 0
        except (TypeError, ValueError, OverflowError):
            valid = False
        # A bad size still takes part in the size exchange (as -1), so every rank raises at once
        # instead of waiting for this one until the timeout.
        self.group, self.nbytes = g, int(nbytes) if valid else -1
        topo = g.topo
        seq = g.next_seq()
        self.sizes = [int(s) for s in g.allgather_int64([self.nbytes], f"Window #{seq} creation")[:, 0]]
        bad = [r for r, n in enumerate(self.sizes) if n < 0]
        if bad:
            raise WindowError(f"Window size must be a non-negative integer, got {nbytes!r}" if not valid else
                              f"Window #{seq} creation: rank(s) {bad} passed a size that is not a "
                              f"non-negative integer")
        self.id = next(Window._ids)
        self._freed = False
        self._refused_seen = 0
        self._sent_to_node = np.zeros(topo.num_nodes, dtype=np.int64)   # packets sent per node
        self._seq_to_node = np.zeros(topo.num_nodes, dtype=np.int64)
        self._pending = []
        local = topo.local_ranks
        self._data_off = {}
        off = _round64(_ARRIVALS_OFF + 4 * (topo.local_size + 1) * topo.world_size)
        for r in local:
            self._data_off[r] = off
            off += _round64(self.sizes[r])
        def register(segments):
            # Before the group-wide barrier that ends the creation: no rank can write to this window
            # before every node's relay knows it.
            self._seg = segments[0]
            self._mem = self._seg.array
            if topo.num_nodes > 1:
                _relay(g).register(self)
        shm.create_node_segments(g.transport, topo, [max(off, 64)], before_barrier=register)
        mine = self._data_off[topo.rank]
        self.buffer = self._mem[mine:mine + self.nbytes]

    # -- access --------------------------------------------------------------------------
    def tensor(self, dtype=None):
        """This rank's window as a 1-D torch tensor of ``dtype`` (default uint8), sharing memory."""
        import torch
        self._check()
        t = torch.from_numpy(self.buffer)
        return t if dtype is None or dtype == torch.uint8 else t.view(dtype)

    def _check(self):
        if self._freed:
            raise WindowError(f"window {self.id} was used after free()")

    def _region(self, rank):
        off = self._data_off[rank]
        return self._mem[off:off + self.sizes[rank]]

    def _arrival_off(self, dest_local, src):
        return _ARRIVALS_OFF + 4 * (dest_local * self.group.size + src)

    def _handled_off(self, src):
        """Offset of the count of ``src``'s packets this node's relay has handled (delivered or refused)."""
        return _ARRIVALS_OFF + 4 * (self.group.topo.local_size * self.group.size + src)

    def arrivals(self):
        """int64 [world_size]: writes with notify that reached this rank's window, per source rank."""
        self._check()
        g = self.group
        base = self._arrival_off(g.topo.local_rank, 0)
        return self._mem[base:base + 4 * g.size].view(np.uint32).astype(np.int64)

    def wait_from(self, src, count=1, timeout=None):
        """Block until at least ``count`` writes from rank ``src`` (counted since creation) are visible."""
        self._check()
        g = self.group
        if not 0 <= src < g.size:
            raise WindowError(f"source rank {src} is outside the group (size {g.size})")
        timeout = g.timeout_s if timeout is None else timeout
        if not _core.wait_u32_ge(self._mem, self._arrival_off(g.topo.local_rank, src), count, timeout):
            raise MultiwriteTimeout(f"window {self.id}: only {self.arrivals()[src]} of {count} writes from "
                                    f"rank {src} arrived within {timeout:g}s")

    # -- the primitive -----------------------------------------------------------------------
    def multi_write(self, src, ranks, offset=0, *, notify=True, mode=None):
        """Write ``src`` (tensor/array, any dtype, viewed as bytes) into the window of every rank in
        ``ranks`` at byte ``offset`` (an int for all, or a list with one offset per rank).
        Returns a WriteRequest; ``wait()`` gives local completion. Out-of-window writes, ranks outside
        the group and duplicate ranks raise WindowError here, at the sender."""
        self._check()
        g = self.group
        topo = g.topo
        mode = g.mode if mode is None else check_mode(mode)
        data = _tensors.input_bytes(src)
        n = data.nbytes
        ranks = [int(r) for r in ranks]
        if len(set(ranks)) != len(ranks):
            raise WindowError(f"multi_write: duplicate destination ranks in {ranks}")
        offsets = list(offset) if isinstance(offset, (list, tuple, np.ndarray)) else [offset] * len(ranks)
        if len(offsets) != len(ranks):
            raise WindowError(f"multi_write: {len(offsets)} offsets for {len(ranks)} destination ranks")
        for r, off in zip(ranks, offsets):
            if not 0 <= r < g.size:
                raise WindowError(f"multi_write: destination rank {r} is outside the group (size {g.size})")
            if int(off) != off or off < 0 or off + n > self.sizes[r]:
                raise WindowError(f"multi_write: write of {n} bytes at offset {off} is outside rank {r}'s "
                                  f"window of {self.sizes[r]} bytes")
        offset_of = dict(zip(ranks, (int(o) for o in offsets)))
        own, hops = tree.plan(topo, topo.rank, ranks, relay=tree.leader, per_rank=mode == "unicast")
        for r in own:          # this node: straight into shared memory
            off = offset_of[r]
            self._region(r)[off:off + n] = data
            g.stats.add_intra(n)
            if notify:
                _core.atomic_add_u32(self._mem, self._arrival_off(topo.local_rank_of[r], topo.rank), 1)
        requests = []
        keep = [data]
        for hop in hops:
            requests += self._send_packet(hop, [(r, offset_of[r]) for r in hop.ranks], data, notify, keep)
        return WriteRequest(requests, keep, g.timeout_s)

    def _send_packet(self, hop, dests, data, notify, keep):
        """One packet of ``hop`` (engine/tree.py): ``dests`` = (rank, offset) in local-rank order."""
        g = self.group
        topo, node, bitmap = g.topo, hop.node, hop.bitmap
        common = len({off for _, off in dests}) == 1
        self._seq_to_node[node] += 1
        header = np.empty(_core.header_size(0 if common else len(dests)), dtype=np.uint8)
        _core.build_header(header, window_id=self.id, seq=int(self._seq_to_node[node]), src_rank=topo.rank,
                           dest_node=node, dest_bitmap=bitmap, offset=dests[0][1] if common else 0,
                           payload_len=data.nbytes, flags=_core.FLAG_NOTIFY if notify else 0,
                           dest_offsets=None if common else np.array([o for _, o in dests], dtype=np.uint64))
        keep.append(header)
        self._sent_to_node[node] += 1
        g.stats.add_inter(header.nbytes + data.nbytes, node)
        return _relay(g).post(hop.relay, header, data)

    def fence(self):
        """Collective: every write issued before the fence, by any rank, is visible when it returns."""
        self._check()
        g = self.group
        for req in self._pending:
            req.wait()
        sent = g.allgather_int64(self._sent_to_node, f"window {self.id} fence")[:, g.topo.node]
        if g.topo.num_nodes > 1:
            # Per source: packets from different sources may arrive in any order, so a total could be
            # reached by a packet that a rank sent after its own fence, before an older one landed.
            deadline = time.monotonic() + g.timeout_s
            for src in np.flatnonzero(sent):
                target = int(sent[src]) & 0xFFFFFFFF
                while not _core.wait_u32_ge(self._mem, self._handled_off(int(src)), target, 0.05):
                    self._check_relay()
                    if time.monotonic() > deadline:
                        raise MultiwriteTimeout(
                            f"window {self.id} fence: the relay of node {g.topo.node} handled "
                            f"{_core.atomic_load_u32(self._mem, self._handled_off(int(src)))} of the {int(sent[src])} "
                            f"packets rank {int(src)} sent it within {g.timeout_s:g}s (rank {int(src)} died or hangs)")
        g.node_barrier(f"window {self.id} fence")
        refused = _core.atomic_load_u32(self._mem, _REFUSED_OFF)
        if refused != self._refused_seen:
            count, self._refused_seen = (refused - self._refused_seen) & 0xFFFFFFFF, refused
            raise MultiwriteError(f"window {self.id} fence: the relay of node {g.topo.node} refused {count} "
                                  f"packet(s) for this window since the last fence, so their writes are missing; "
                                  f"last: {self._relay_message()}")

    def _relay_message(self):
        raw = bytes(self._mem[_RELAY_MSG_OFF:_RELAY_MSG_OFF + _RELAY_MSG_LEN])
        return raw.rstrip(b"\0").decode(errors="replace") or "(no details)"

    def _check_relay(self):
        """Raise if this node's relay stopped for good (every rank of the node sees it in the window)."""
        if _core.atomic_load_u32(self._mem, _RELAY_DEAD_OFF):
            raise MultiwriteError(f"window {self.id}: the relay of node {self.group.topo.node} stopped: "
                                  f"{self._relay_message()}")

    def free(self):
        """Collective: fence, then release the window. Any later use raises WindowError."""
        if self._freed:
            return
        self.fence()
        g = self.group
        if g.topo.num_nodes > 1:
            _relay(g).unregister(self)
        self._freed = True
        self.buffer = None
        self._mem = None
        self._seg.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.free()


# -- the node relay ------------------------------------------------------------------------------
def _relay(g):
    relay = getattr(g, "_relay", None)
    if relay is None:
        relay = g._relay = _RelayService(g)
    return relay


class _Stop(Exception):
    """The STOP packet of _RelayService.stop arrived."""


class _RelayService:
    """Receives MultiWrite packets for this node's windows (thread on the node leader) and fans them
    out into the destination ranks' windows through shared memory.

    A packet is a header message (tag 1) and, on tags of its own (see _body_tag), the destination
    offsets and the payload. A packet that is malformed or does not fit (bad checksum, unknown window,
    out-of-window write, wrong sender) is refused: its remaining parts are drained where possible,
    the refusal is counted in the window (its next fence raises on every rank of the node) and
    logged, and the relay goes on serving. Only a failure of the transport itself stops it; that is
    marked in every registered window, so the node's ranks learn it at their next fence."""

    def __init__(self, g):
        self.group = g
        # A transport of its own, so that relay traffic never matches operator messages; the relay
        # thread may idle on it for long, hence the long default limit (senders pass their own).
        self.transport = g.transport.split(list(range(g.size)), default_timeout_s=7 * 24 * 3600)
        self.windows = {}
        self.error = None
        self.refused = 0                     # packets refused over the relay's life (any window)
        self._stop = threading.Event()
        self._thread = None
        self._expected_seq = {}
        self._sent = collections.Counter()       # relay rank -> packets this rank sent it
        self._received = collections.Counter()   # source rank -> packet headers received from it
        self._undrained = []      # drains given up on: their buffers must stay alive (Gloo writes into them)
        g._on_close = getattr(g, "_on_close", []) + [self.stop]

    def register(self, win):
        self.windows[win.id] = win
        topo = self.group.topo
        if self.group.rank == tree.leader(topo, self.group.rank, topo.node) and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="multiwrite-relay", daemon=True)
            self._thread.start()

    def unregister(self, win):
        self.windows.pop(win.id, None)

    def post(self, relay, header, data):
        """Send one packet (``header``: its header plus any destination offsets; ``data``: the payload)
        to the relay rank ``relay``; returns the send requests."""
        k = self._sent[relay]
        self._sent[relay] += 1
        t, H = self.transport, _packets.HEADER
        requests = [t.isend(header[:H], relay, _TAG_HEADER)]
        if header.nbytes > H:
            requests.append(t.isend(header[H:], relay, _offsets_tag(k)))
        requests.append(t.isend(data, relay, _body_tag(k)))
        return requests

    def stop(self):
        """Collective (group close): every node leader's relay thread gets a STOP packet from the
        leader of the next node (a Gloo receive cannot be cancelled), MPI's also sees the flag."""
        g = self.group
        topo = g.topo
        self._stop.set()
        if topo.num_nodes > 1 and g.rank == tree.leader(topo, g.rank, topo.node):
            target = tree.leader(topo, g.rank, (topo.node - 1) % topo.num_nodes)
            header = np.empty(_packets.HEADER, dtype=np.uint8)
            _core.build_header(header, window_id=_STOP_WINDOW, seq=0, src_rank=g.rank,
                               dest_node=topo.node_of[target], dest_bitmap=1, offset=0, payload_len=0)
            try:
                self.transport.isend(header, target, _TAG_HEADER).wait(min(g.timeout_s, 10.0), "relay stop")
            except Exception:
                pass   # that node is gone already; its thread dies with its process
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.transport.close()

    def _recv(self, buf, src, tag):
        """The rest of a packet whose header arrived: it follows at once from the same sender."""
        self.transport.irecv(buf, src, tag).wait(self.group.timeout_s, f"relay receive from rank {src}")

    def _loop(self):
        g = self.group
        header = np.empty(_packets.HEADER, dtype=np.uint8)
        offsets = np.empty(8 * _core.MAX_LOCAL_RANKS, dtype=np.uint8)
        try:
            while not self._stop.is_set():
                req = self.transport.irecv_any(header, _TAG_HEADER)
                if not self.transport.wait_or_stop(req, self._stop):
                    return
                src = req.source()
                k = self._received[src]
                self._received[src] += 1
                try:
                    self._deliver(src, k, header, req.count(), offsets)
                except _Stop:
                    return
                except PeerFailure:
                    raise              # the transport broke: not one bad packet
                except Exception as exc:   # one bad packet (or its parts never came): refuse it, go on
                    self._refuse(src, exc)
        except Exception as exc:  # the transport failed: the node's ranks see it at their next fence
            self.error = exc
            self._mark_all(_RELAY_DEAD_OFF, f"rank {g.rank}: {exc}")
            _log.error("node %d relay (rank %d) stopped: %r", g.topo.node, g.rank, exc)

    def _mark_all(self, offset, message):
        """Set the word at ``offset`` (and the message) in every registered window."""
        for win in list(self.windows.values()):
            _set_message(win, message)
            _core.atomic_store_u32(win._mem, offset, 1)

    def _refuse(self, src, exc, win=None):
        """Count and report a refused packet (see the class doc)."""
        self.refused += 1
        message = f"from rank {src}: {exc}"
        _log.warning("node %d relay refused a packet %s", self.group.topo.node, message)
        win = win if win is not None else getattr(exc, "window", None)
        if win is not None:
            _set_message(win, message)
            _core.atomic_add_u32(win._mem, _REFUSED_OFF, 1, False)
            _core.atomic_add_u32(win._mem, win._handled_off(src), 1)     # handled: its fence need not wait

    def _drain(self, src, k, info):
        """Discard the parts of a refused packet that follow its header (known from a valid header)."""
        t = self.transport
        parts = []
        if info["flags"] & _core.FLAG_PER_DEST_OFFSETS:
            parts.append((_offsets_tag(k), 8 * bin(info["dest_bitmap"]).count("1")))
        if info["payload_len"]:
            parts.append((_body_tag(k), info["payload_len"]))
        for tag, n in parts:
            req = t.drain(src, tag, n, _packets.DRAIN_LIMIT)
            if req is None:
                continue
            try:     # the parts follow their header at once: a sender that lied about them is not waited for
                req.wait(min(self.group.timeout_s, _DRAIN_WAIT_S), f"relay: discarding a refused packet of rank {src}")
            except MultiwriteTimeout:
                req.cancel()
                self._undrained.append(req)     # (exact-size transports: its buffer must outlive it)

    def _deliver(self, src, k, header, received, offsets):
        g = self.group
        topo = g.topo
        if received != _packets.HEADER:
            raise PacketError(f"a header message of {received} bytes (expected {_packets.HEADER})")
        info = _core.parse_header(header, num_local_ranks=topo.local_size)   # PacketError: refused
        if info["window_id"] == _STOP_WINDOW:
            self._stop.set()
            raise _Stop()
        try:
            win = self._check(src, info)
        except Exception as exc:
            self._drain(src, k, info)
            exc.window = self.windows.get(info["window_id"])
            raise
        try:
            dests, offs, first = self._land(src, k, info, win, offsets)
        except Exception as exc:
            exc.window = win           # counted as handled (refused) in this window
            raise
        n = info["payload_len"]
        for r, off in zip(dests[1:], offs[1:]):
            win._region(r)[off:off + n] = first
        if info["flags"] & _core.FLAG_NOTIFY:
            for r in dests:
                _core.atomic_add_u32(win._mem, win._arrival_off(topo.local_rank_of[r], src), 1)
        _core.atomic_add_u32(win._mem, win._handled_off(src), 1)

    def _land(self, src, k, info, win, offsets):
        """Receive the offsets and the payload of packet ``k`` of ``src`` into the first destination's
        window; returns (destination ranks, their offsets, the landed payload)."""
        topo = self.group.topo
        dests = [topo.node_ranks[topo.node][i] for i in range(topo.local_size) if info["dest_bitmap"] >> i & 1]
        n = info["payload_len"]
        if info["flags"] & _core.FLAG_PER_DEST_OFFSETS:
            self._recv(offsets[:8 * len(dests)], src, _offsets_tag(k))
            offs = [int(o) for o in offsets[:8 * len(dests)].view(np.uint64)]
        else:
            offs = [info["offset"]] * len(dests)
        for r, off in zip(dests, offs):
            if off + n > win.sizes[r]:
                self._drain(src, k, dict(info, flags=0))
                raise WindowError(f"{n} bytes at offset {off} exceed rank {r}'s window {win.id} of "
                                  f"{win.sizes[r]} bytes")
        first = win._region(dests[0])[offs[0]:offs[0] + n]
        self._recv(first, src, _body_tag(k))
        return dests, offs, first

    def _check(self, src, info):
        """The registered window a well-formed header ``info`` from ``src`` writes to, or an error."""
        topo = self.group.topo
        win = self.windows.get(info["window_id"])
        if win is None:
            raise WindowError(f"a write to window {info['window_id']}, which is not (or no longer) registered "
                              f"on node {topo.node}")
        key = (win.id, src)
        expected = self._expected_seq.get(key, 0) + 1
        self._expected_seq[key] = info["seq"]     # resynchronize: one bad packet must not refuse the rest
        if info["src_rank"] != src or info["dest_node"] != topo.node:
            raise PacketError(f"the header claims source rank {info['src_rank']} and node {info['dest_node']} "
                              f"(this is node {topo.node})")
        if info["seq"] != expected:
            raise PacketError(f"window {win.id}: packet #{info['seq']}, expected #{expected}")
        return win


def _set_message(win, message):
    raw = message.encode(errors="replace")[:_RELAY_MSG_LEN - 1]
    win._mem[_RELAY_MSG_OFF:_RELAY_MSG_OFF + _RELAY_MSG_LEN] = 0
    win._mem[_RELAY_MSG_OFF:_RELAY_MSG_OFF + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
