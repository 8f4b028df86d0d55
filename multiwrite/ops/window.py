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
from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from .. import _core
from ..engine import packets as _packets
from ..runtime import shm, tensors as _tensors
from ..engine import relay, tree
from ..engine.control import allgather_int64
from .._config import check_mode
from ..errors import MultiwriteError, MultiwriteTimeout, WindowError
from ..runtime.group import resolve
from ..transport import Request, wait_all

if TYPE_CHECKING:
    import torch

    from ..runtime.group import Group

    TensorLike = Union[torch.Tensor, np.ndarray]

_REFUSED_OFF = 4       # u32: packets the node relay refused for this window (malformed, out of bounds)
_RELAY_DEAD_OFF = 8    # u32: 1 once the node relay stopped for good (its transport failed)
_RELAY_MSG_OFF = 16    # 48 bytes: why the relay refused its last packet or stopped (NUL-padded)
_RELAY_MSG_LEN = 48
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

    def __init__(self, nbytes: int, group: Group | None = None) -> None:
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
        self.sizes = [int(s) for s in allgather_int64(g, [self.nbytes], f"Window #{seq} creation")[:, 0]]
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
        self._pending: list[WriteRequest] = []
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
                relay.service(g).register(self)
        shm.create_node_segments(g.transport, topo, [max(off, 64)], before_barrier=register)
        mine = self._data_off[topo.rank]
        self.buffer = self._mem[mine:mine + self.nbytes]

    # -- access --------------------------------------------------------------------------
    def tensor(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """This rank's window as a 1-D torch tensor of ``dtype`` (default uint8), sharing memory."""
        import torch
        self._check()
        t = torch.from_numpy(self.buffer)
        return t if dtype is None or dtype == torch.uint8 else t.view(dtype)

    def _check(self):
        if self._freed:
            raise WindowError(f"window {self.id} was used after free()")

    # -- what the node relay (engine/relay.py) calls: the window's side of delivery ----------------
    def region(self, rank):
        """Rank ``rank``'s window (a rank of this node) as uint8, in the node's shared memory."""
        off = self._data_off[rank]
        return self._mem[off:off + self.sizes[rank]]

    def delivered(self, src, dests, notify):
        """The relay landed a packet of ``src`` in the windows of ``dests`` (ranks of this node)."""
        topo = self.group.topo
        if notify:
            for r in dests:
                _core.atomic_add_u32(self._mem, self._arrival_off(topo.local_rank_of[r], src), 1)
        _core.atomic_add_u32(self._mem, self._handled_off(src), 1)

    def refused(self, src, message):
        """The relay refused a packet of ``src`` for this window: counted (the next fence of every rank
        of the node raises) and handled (the fence need not wait for it)."""
        self._set_relay_message(message)
        _core.atomic_add_u32(self._mem, _REFUSED_OFF, 1, False)
        _core.atomic_add_u32(self._mem, self._handled_off(src), 1)

    def relay_stopped(self, message):
        """The relay stopped for good: every rank of the node sees it at its next fence."""
        self._set_relay_message(message)
        _core.atomic_store_u32(self._mem, _RELAY_DEAD_OFF, 1)

    def _set_relay_message(self, message):
        raw = message.encode(errors="replace")[:_RELAY_MSG_LEN - 1]
        self._mem[_RELAY_MSG_OFF:_RELAY_MSG_OFF + _RELAY_MSG_LEN] = 0
        self._mem[_RELAY_MSG_OFF:_RELAY_MSG_OFF + len(raw)] = np.frombuffer(raw, dtype=np.uint8)

    def _arrival_off(self, dest_local, src):
        return _ARRIVALS_OFF + 4 * (dest_local * self.group.size + src)

    def _handled_off(self, src):
        """Offset of the count of ``src``'s packets this node's relay has handled (delivered or refused)."""
        return _ARRIVALS_OFF + 4 * (self.group.topo.local_size * self.group.size + src)

    def arrivals(self) -> np.ndarray:
        """int64 [world_size]: writes with notify that reached this rank's window, per source rank."""
        self._check()
        g = self.group
        base = self._arrival_off(g.topo.local_rank, 0)
        return self._mem[base:base + 4 * g.size].view(np.uint32).astype(np.int64)

    def wait_from(self, src: int, count: int = 1, timeout: float | None = None) -> None:
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
    def multi_write(self, src: TensorLike, ranks: Sequence[int],
                    offset: int | list[int] | tuple[int, ...] | np.ndarray = 0, *, notify: bool = True,
                    mode: str | None = None) -> WriteRequest:
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
            self.region(r)[off:off + n] = data
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
        return relay.service(g).post(hop.relay, header, data)

    def fence(self) -> None:
        """Collective: every write issued before the fence, by any rank, is visible when it returns."""
        self._check()
        g = self.group
        for req in self._pending:
            req.wait()
        sent = allgather_int64(g, self._sent_to_node, f"window {self.id} fence")[:, g.topo.node]
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

    def free(self) -> None:
        """Collective: fence, then release the window. Any later use raises WindowError."""
        if self._freed:
            return
        self.fence()
        g = self.group
        if g.topo.num_nodes > 1:
            relay.service(g).unregister(self)
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
