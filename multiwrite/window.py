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
import itertools
import threading
import time

import numpy as np

from . import _core, _packets, _tensors, shm
from ._config import check_mode
from .errors import MultiwriteError, MultiwriteTimeout, WindowError
from .group import resolve
from .transport import Request, wait_all

_TAG_HEADER = 1
_TAG_BODY = 2
_TAG_OFFSETS = 3
_STOP_WINDOW = 0xFFFFFFFF
_PROCESSED_OFF = 0     # u32: packets the node relay has delivered for this window
_ARRIVALS_OFF = 64     # u32 [local_size, world_size]: writes arrived per (destination, source)


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
        if int(nbytes) != nbytes or nbytes < 0:
            raise WindowError(f"Window size must be a non-negative integer, got {nbytes!r}")
        self.group, self.nbytes = g, int(nbytes)
        topo = g.topo
        seq = g.next_seq()
        self.sizes = [int(s) for s in g.allgather_int64([self.nbytes])[:, 0]]
        self.id = next(Window._ids)
        self._freed = False
        self._sent_to_node = np.zeros(topo.num_nodes, dtype=np.int64)   # packets sent per node
        self._seq_to_node = np.zeros(topo.num_nodes, dtype=np.int64)
        self._pending = []
        local = topo.local_ranks
        self._data_off = {}
        off = _round64(_ARRIVALS_OFF + 4 * topo.local_size * topo.world_size)
        for r in local:
            self._data_off[r] = off
            off += _round64(self.sizes[r])
        self._seg = shm.create_node_segments(g.transport, topo, [max(off, 64)])[0]
        self._mem = self._seg.array
        g.node_barrier(f"Window #{seq} creation")
        mine = self._data_off[topo.rank]
        self.buffer = self._mem[mine:mine + self.nbytes]
        if topo.num_nodes > 1:
            _relay(g).register(self)
        g.node_barrier(f"Window #{seq} creation")

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
        by_node = {}
        for r, off in zip(ranks, offsets):
            by_node.setdefault(topo.node_of[r], []).append((r, int(off)))
        requests = []
        keep = [data]
        for node, dests in sorted(by_node.items()):
            if node == topo.node:
                for r, off in dests:
                    self._region(r)[off:off + n] = data
                    g.stats.add_intra(n)
                    if notify:
                        _core.atomic_add_u32(self._mem, self._arrival_off(topo.local_rank_of[r], topo.rank), 1)
                continue
            groups = [dests] if mode == "multiwrite" else [[d] for d in dests]
            for part in groups:
                requests += self._send_packet(node, part, data, notify, keep)
        return WriteRequest(requests, keep, g.timeout_s)

    def _send_packet(self, node, dests, data, notify, keep):
        g = self.group
        topo = g.topo
        bitmap = 0
        for r, _ in dests:
            bitmap |= 1 << topo.local_rank_of[r]
        dests = sorted(dests, key=lambda d: topo.local_rank_of[d[0]])
        common = len({off for _, off in dests}) == 1
        self._seq_to_node[node] += 1
        header = np.empty(_core.header_size(0 if common else len(dests)), dtype=np.uint8)
        _core.build_header(header, window_id=self.id, seq=int(self._seq_to_node[node]), src_rank=topo.rank,
                           dest_node=node, dest_bitmap=bitmap, offset=dests[0][1] if common else 0,
                           payload_len=data.nbytes, flags=_core.FLAG_NOTIFY if notify else 0,
                           dest_offsets=None if common else np.array([o for _, o in dests], dtype=np.uint64))
        keep.append(header)
        relay = topo.node_ranks[node][0]
        self._sent_to_node[node] += 1
        g.stats.add_inter(header.nbytes + data.nbytes, node)
        t = _relay(g).transport
        requests = [t.isend(header[:_packets.HEADER], relay, _TAG_HEADER)]
        if not common:
            requests.append(t.isend(header[_packets.HEADER:], relay, _TAG_OFFSETS))
        requests.append(t.isend(data, relay, _TAG_BODY))
        return requests

    def fence(self):
        """Collective: every write issued before the fence, by any rank, is visible when it returns."""
        self._check()
        g = self.group
        for req in self._pending:
            req.wait()
        expected = int(g.allgather_int64(self._sent_to_node)[:, g.topo.node].sum())
        if g.topo.num_nodes > 1:
            _relay(g).raise_error()
            if not _core.wait_u32_ge(self._mem, _PROCESSED_OFF, expected & 0xFFFFFFFF, g.timeout_s):
                _relay(g).raise_error()
                raise MultiwriteTimeout(
                    f"window {self.id} fence: the relay of node {g.topo.node} delivered "
                    f"{_core.atomic_load_u32(self._mem, _PROCESSED_OFF)} of {expected} packets within "
                    f"{g.timeout_s:g}s")
        g.node_barrier(f"window {self.id} fence")

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


class _RelayService:
    """Receives MultiWrite packets for this node's windows (thread on the node leader) and fans them
    out into the destination ranks' windows through shared memory."""

    def __init__(self, g):
        self.group = g
        # A transport of its own, so that relay traffic never matches operator messages; the relay
        # thread may idle on it for long, hence the long default limit (senders pass their own).
        self.transport = g.transport.split(list(range(g.size)), default_timeout_s=7 * 24 * 3600)
        self.windows = {}
        self.error = None
        self._stop = threading.Event()
        self._thread = None
        self._expected_seq = {}
        g._on_close = getattr(g, "_on_close", []) + [self.stop]

    def register(self, win):
        self.windows[win.id] = win
        if self.group.rank == self.group.topo.leader and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="multiwrite-relay", daemon=True)
            self._thread.start()

    def unregister(self, win):
        self.windows.pop(win.id, None)

    def raise_error(self):
        if self.error is not None:
            raise MultiwriteError(f"node relay failed: {self.error}") from self.error

    def stop(self):
        """Collective (group close): every node leader's relay thread gets a STOP packet from the
        leader of the next node (a Gloo receive cannot be cancelled), MPI's also sees the flag."""
        g = self.group
        topo = g.topo
        self._stop.set()
        if topo.num_nodes > 1 and g.rank == topo.leader:
            target = topo.node_ranks[(topo.node - 1) % topo.num_nodes][0]
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
        req = self.transport.irecv(buf, src, tag)
        req.wait(self.group.timeout_s, f"relay receive from rank {src}")
        return req

    def _loop(self):
        from .transport.mpi import MPITransport
        g = self.group
        header = np.empty(_packets.HEADER, dtype=np.uint8)
        offsets = np.empty(8 * _core.MAX_LOCAL_RANKS, dtype=np.uint8)
        try:
            while not self._stop.is_set():
                recv_any = self._recv_any_mpi if isinstance(self.transport, MPITransport) else self._recv_any_gloo
                src = recv_any(header)
                if src is None:
                    return
                self._deliver(src, header, offsets)
        except Exception as exc:  # reported by the next fence/wait on this node (and here, at once)
            self.error = exc
            import sys
            print(f"multiwrite: node {g.topo.node} relay (rank {g.rank}) stopped: {exc!r}", file=sys.stderr,
                  flush=True)

    def _recv_any_mpi(self, header):
        MPI = self.transport.MPI
        status = MPI.Status()
        req = self.transport.comm.Irecv([header, MPI.BYTE], source=MPI.ANY_SOURCE, tag=_TAG_HEADER)
        sleep = 0.0
        while not req.Test(status):
            if self._stop.is_set():
                req.Cancel()
                return None
            sleep = min(max(sleep * 2, 2e-5), 1e-3)
            time.sleep(sleep)
        return status.Get_source()

    def _recv_any_gloo(self, header):
        import torch
        # Gloo completes a receive only inside wait(), which cannot be interrupted: the thread
        # blocks here (GIL released) until a packet or the STOP packet of stop() arrives.
        work = self.transport.pg.recv_anysource([torch.from_numpy(header)], _TAG_HEADER)
        work.wait()
        return work.source_rank()

    def _deliver(self, src, header, offsets):
        g = self.group
        topo = g.topo
        info = _core.parse_header(header, num_local_ranks=topo.local_size)
        if info["window_id"] == _STOP_WINDOW:
            self._stop.set()
            return
        win = self.windows.get(info["window_id"])
        if win is None:
            raise WindowError(f"rank {src} wrote to window {info['window_id']}, which is not (or no longer) "
                              f"registered on node {topo.node}")
        if info["src_rank"] != src or info["dest_node"] != topo.node:
            raise MultiwriteError(f"packet from rank {src} claims source {info['src_rank']} and node "
                                  f"{info['dest_node']} (this is node {topo.node})")
        key = (win.id, src)
        expected = self._expected_seq.get(key, 0) + 1
        if info["seq"] != expected:
            raise MultiwriteError(f"window {win.id}: packet #{info['seq']} from rank {src}, expected #{expected}")
        self._expected_seq[key] = expected
        dests = [topo.node_ranks[topo.node][i] for i in range(topo.local_size) if info["dest_bitmap"] >> i & 1]
        n = info["payload_len"]
        if info["flags"] & _core.FLAG_PER_DEST_OFFSETS:
            k = len(dests)
            if self._recv(offsets[:8 * k], src, _TAG_OFFSETS) is None:
                return
            offs = [int(o) for o in offsets[:8 * k].view(np.uint64)]
        else:
            offs = [info["offset"]] * len(dests)
        for r, off in zip(dests, offs):
            if off + n > win.sizes[r]:
                raise WindowError(f"packet from rank {src}: {n} bytes at offset {off} exceed rank {r}'s "
                                  f"window of {win.sizes[r]} bytes")
        first = win._region(dests[0])[offs[0]:offs[0] + n]
        if self._recv(first, src, _TAG_BODY) is None:
            return
        for r, off in zip(dests[1:], offs[1:]):
            win._region(r)[off:off + n] = first
        if info["flags"] & _core.FLAG_NOTIFY:
            for r in dests:
                _core.atomic_add_u32(win._mem, win._arrival_off(topo.local_rank_of[r], src), 1)
        _core.atomic_add_u32(win._mem, _PROCESSED_OFF, 1)
