"""The node relay service of the one-sided windows: packets in, fan-out through shared memory.

A multi_write packet is a header message (tag 1) and, on tags of its own (see ``body_tag``), the
destination offsets and the payload; it goes to the node's relay (tree.leader), whose service thread
receives from any source, validates the header (the C++ core), lands the payload straight in the first
destination's window and copies it to the others (docs/design.md, "The path of one packet").
A packet that is malformed or does not fit is refused, reported to its window and logged, and the
service goes on; only a failure of the transport itself stops it.
"""
import collections
import logging
import threading

import numpy as np

from .. import _core
from ..errors import MultiwriteTimeout, PeerFailure, WindowError
from . import packets as _packets, tree

PacketError = _core.PacketError
_log = logging.getLogger("multiwrite")

TAG_HEADER = 1
STOP_WINDOW = 0xFFFFFFFF
_DRAIN_WAIT_S = 1.0    # how long the relay waits for the parts of a refused packet
_PACKET_TAGS = 1 << 21  # packets k of one (source, relay) pair use tags 2 + 2·(k mod this) (+1)


def offsets_tag(k):
    """Tag of the destination offsets of the k-th packet from one source to one relay."""
    return 2 + 2 * (k % _PACKET_TAGS)


def body_tag(k):
    """Tag of the payload of that packet: every packet has tags of its own, so a refused packet's
    unread parts can never be taken for a later packet's."""
    return 3 + 2 * (k % _PACKET_TAGS)


def service(g):
    """The relay service of group ``g`` (made on first use: a transport of its own, collectively)."""
    return g.extension("relay", lambda: RelayService(g))


class _Stop(Exception):
    """The STOP packet of _RelayService.stop arrived."""


class RelayService:
    """Receives MultiWrite packets for this node's targets (the windows; a thread on the node's relay
    rank, tree.leader) and fans them out into the destination ranks' windows through shared memory.
    A target has ``id``, ``sizes`` (every rank's window size), ``region(rank)``, ``delivered(src,
    dests, notify)``, ``refused(src, message)`` and ``relay_stopped(message)``.

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
        g.on_close(self.stop)

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
        requests = [t.isend(header[:H], relay, TAG_HEADER)]
        if header.nbytes > H:
            requests.append(t.isend(header[H:], relay, offsets_tag(k)))
        requests.append(t.isend(data, relay, body_tag(k)))
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
            _core.build_header(header, window_id=STOP_WINDOW, seq=0, src_rank=g.rank,
                               dest_node=topo.node_of[target], dest_bitmap=1, offset=0, payload_len=0)
            try:
                self.transport.isend(header, target, TAG_HEADER).wait(min(g.timeout_s, 10.0), "relay stop")
            except Exception:
                pass   # that node is gone already; its thread dies with its process
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.transport.close()

    def _recv(self, buf, src, tag):
        """The rest of a packet whose header arrived: it follows at once from the same sender. Its size
        is agreed (a plain receive): it comes from the header, checked by _check, and the sender's
        ``post`` builds header and payload from the same packet (Window.multi_write)."""
        self.transport.irecv(buf, src, tag).wait(self.group.timeout_s, f"relay receive from rank {src}")

    def _loop(self):
        g = self.group
        header = np.empty(_packets.HEADER, dtype=np.uint8)
        offsets = np.empty(8 * _core.MAX_LOCAL_RANKS, dtype=np.uint8)
        try:
            while not self._stop.is_set():
                req = self.transport.irecv_any(header, TAG_HEADER)
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
            for win in list(self.windows.values()):
                win.relay_stopped(f"rank {g.rank}: {exc}")
            _log.error("node %d relay (rank %d) stopped: %r", g.topo.node, g.rank, exc)


    def _refuse(self, src, exc, win=None):
        """Count and report a refused packet (see the class doc)."""
        self.refused += 1
        message = f"from rank {src}: {exc}"
        _log.warning("node %d relay refused a packet %s", self.group.topo.node, message)
        win = win if win is not None else getattr(exc, "window", None)
        if win is not None:
            win.refused(src, message)

    def _drain(self, src, k, info):
        """Discard the parts of a refused packet that follow its header (known from a valid header)."""
        t = self.transport
        parts = []
        if info["flags"] & _core.FLAG_PER_DEST_OFFSETS:
            parts.append((offsets_tag(k), 8 * bin(info["dest_bitmap"]).count("1")))
        if info["payload_len"]:
            parts.append((body_tag(k), info["payload_len"]))
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
        if info["window_id"] == STOP_WINDOW:
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
            win.region(r)[off:off + n] = first
        win.delivered(src, dests, bool(info["flags"] & _core.FLAG_NOTIFY))

    def _land(self, src, k, info, win, offsets):
        """Receive the offsets and the payload of packet ``k`` of ``src`` into the first destination's
        window; returns (destination ranks, their offsets, the landed payload)."""
        topo = self.group.topo
        dests = [topo.node_ranks[topo.node][i] for i in range(topo.local_size) if info["dest_bitmap"] >> i & 1]
        n = info["payload_len"]
        if info["flags"] & _core.FLAG_PER_DEST_OFFSETS:
            self._recv(offsets[:8 * len(dests)], src, offsets_tag(k))
            offs = [int(o) for o in offsets[:8 * len(dests)].view(np.uint64)]
        else:
            offs = [info["offset"]] * len(dests)
        for r, off in zip(dests, offs):
            if off + n > win.sizes[r]:
                self._drain(src, k, dict(info, flags=0))
                raise WindowError(f"{n} bytes at offset {off} exceed rank {r}'s window {win.id} of "
                                  f"{win.sizes[r]} bytes")
        first = win.region(dests[0])[offs[0]:offs[0] + n]
        self._recv(first, src, body_tag(k))
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
