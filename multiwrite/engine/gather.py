"""The small-chunk gather path: every rank's chunk to every rank, barrier-free (node rounds of
runtime/group.py) and with the fewest messages (docs/design.md, "Small messages"). Used by the small
AllGather (ops/allgather.py) and by the control allgather (engine/control.py).

Every rank writes its chunk into the node's round staging area (Group.round_*: a counter per round
instead of barriers). Up to AGGREGATE_MAX_BYTES per node the node's chunks travel as ONE packet to
the leader of every other node; above, every rank sends its own chunk to its relay on each other node
(relay trees of engine/tree.py).
"""
import numpy as np
from time import perf_counter as _pc

from .. import _core
from ..errors import MismatchError, MultiwriteError, MultiwriteTimeout
from ..runtime import dtypes as _dtypes
from ..runtime.group import ROUND_STAGING_BYTES, tag_for
from . import packets as _packets, tree

OP = _packets.WIN_ALLGATHER
#: Chunks up to this size (and P * c up to the round staging area) take the barrier-free path.
SMALL_MAX_BYTES = 64 * 1024
#: Up to this many bytes per node, the node leader sends its node's chunks as one packet; above it,
#: every rank sends its own chunk to its relay on each other node (messages stay below MPI's eager
#: limit, and several ranks share the sending work).
AGGREGATE_MAX_BYTES = 32 * 1024
TRACE = None                # a list: (label, perf_counter) of the small path's phases (profiling)
_SMALL = 1                  # path id in the node signature: ranks on different paths disagree


def next_call(g, c, dtype):
    """(seq, tag, window id, description) of this rank's next all_gather of ``c`` bytes of ``dtype``
    per rank; the dtype travels in every header's window id."""
    seq = g.next_seq()
    return (seq, tag_for(OP, seq), OP + 256 * _dtypes.code(dtype),
            f"all_gather (call #{seq}, {c} bytes of {dtype} per rank)")


def small_path(world_size, c):
    """True when an all_gather of ``c`` bytes per rank takes the barrier-free small path."""
    return 0 < c <= SMALL_MAX_BYTES and world_size * c <= ROUND_STAGING_BYTES


def node_aggregated(topo, c):
    """True when, on the small path, each node's leader sends the node's chunks as one packet (so a
    node sends N-1 packets of L·c + 64 bytes instead of L·(N-1) packets of c + 64)."""
    return small_path(topo.world_size, c) and max(len(r) for r in topo.node_ranks) * c <= AGGREGATE_MAX_BYTES


def gather_small(g, plan, out, src, seq, tag, window_id, what):
    """MultiWrite AllGather for small chunks (latency-bound): no node barriers, one message per node pair.

    Every rank writes its chunk into the node's round staging area (Group.round_*: a counter per round
    instead of barriers). Up to AGGREGATE_MAX_BYTES per node, the node's chunks travel as ONE packet
    to the leader of every other node (header + the node's L chunks: the same L·c payload bytes cross
    the link as in the general path, with one header instead of L), which lands it in its node's
    staging area. The packet is sent by the rank whose chunk completes the node's chunks where the
    transport can receive from any source (MPI): waking the leader to send would put a wake-up (100-200
    us with 8 ranks on 2 cores) on the critical path. Elsewhere (Gloo) the leader sends it. Other ranks
    never touch the network: at small sizes the per-message CPU cost of many ranks, not the link, is
    what the time is made of (every rank sending its own chunk measured 1.4x slower at 1 KiB on the
    8-rank virtual cluster). For the same reason a rank's part is a few calls: what depends only on
    the chunk size is computed once (_SmallPlan), and the shared-memory steps are C++ calls.
    """
    if TRACE is not None: TRACE.append(("enter", _pc()))
    staging, rnd, completed = g.round_enter(seq, (OP, seq, plan.c, window_id, 0, _SMALL), g.size, src, plan.offset,
                                            wait_first=plan.aggregated, wake_first=not plan.any_sender)
    if TRACE is not None: TRACE.append(("put", _pc()))
    if plan.intra:
        g.stats.add_intra(plan.c)
    sends = None
    if plan.any_sender and completed:
        # My chunk completed the node's: I send them (a disagreement in my node: a packet without
        # payload), then wake the leader, which receives the other nodes' packets.
        sends = _post_node_packet(g, plan, staging, rnd, seq, tag, window_id)
        if not plan.leads:
            g.round_wake_first(rnd)
    error = None
    if plan.leads:
        error = _leader_exchange(g, plan, staging, rnd, seq, tag, window_id, what, sends)
        # Every other node's chunks count as arrived, landed or failed, so no peer waits for them;
        # my own copy comes first (round_wait's arrive): the arrival wakes the node's ranks, which
        # then take the CPU (ranks outnumber cores on small hosts) while this rank would still work.
        g.round_wait(rnd, what, error, out=out, staging=staging, arrive=g.size - g.topo.local_size)
        if TRACE is not None: TRACE.append(("all_in", _pc()))
        return out
    if sends is not None:
        error = _packets.finish_sends(g, what, sends)
    elif plan.relays:
        error = _relay_exchange(g, staging, rnd, src, seq, tag, window_id, what)
    if TRACE is not None: TRACE.append(("relayed", _pc()))
    g.round_wait(rnd, what, error, out=out, staging=staging)
    if TRACE is not None: TRACE.append(("all_in", _pc()))
    return out


class SmallPlan:
    """What the small path needs for one chunk size on this rank, worked out once per group: on a
    host with more ranks than cores, each rank's per-call Python work is CPU time its peers wait for.
    Senders of node packets also get their buffers (one set per round parity), leaders the staging
    slices that each other node's packet lands in."""

    _MAX_PLANS = 64      # chunk sizes remembered per group (the stress test uses many)

    @classmethod
    def get(cls, g, c):
        plans = g.extension("gather.small_plans", dict)
        plan = plans.get(c)
        if plan is None:
            if len(plans) >= cls._MAX_PLANS:
                plans.pop(next(iter(plans)))
            plan = plans[c] = cls(g, c)
        return plan

    def __init__(self, g, c):
        topo, H = g.topo, _packets.HEADER
        P = g.size
        self.c, self.offset, self.gathered = c, g.rank * c, P * c
        self.intra = topo.local_size > 1
        self.aggregated = topo.num_nodes > 1 and node_aggregated(topo, c)
        self.leads = self.aggregated and g.rank == topo.leader
        self.relays = topo.num_nodes > 1 and not self.aggregated
        # any rank may send the node's packet: the leaders receive it from any source
        self.any_sender = self.aggregated and g.transport.recv_any_source
        self.fused = not g.transport.exact_size_recv
        if not self.aggregated:
            return
        self.others = _other_nodes(topo)        # (node, its leader, its number of ranks)
        mine = topo.node_ranks[topo.node]
        self.payload_len = len(mine) * c
        self.packet_offset = mine[0] * c
        self.bitmaps = [tree.full_bitmap(size) for _, _, size in self.others]
        self.dests = tuple((m, bitmap) for (m, _, _), bitmap in zip(self.others, self.bitmaps))
        # the slots pack_node_packets compares: the signature _all_gather_small announces has 6 values
        self.signature_slots = [g.round_signature_slots(parity, 6) for parity in (0, 1)]
        self.check_args = dict(window_size=P * c, num_local_ranks=topo.local_size)
        # outboxes: one row per other node, per parity
        self.outboxes = [np.empty((len(self.others), H + self.payload_len), dtype=np.uint8) for _ in range(2)]
        self.packets = [list(box) for box in self.outboxes]      # the rows as 1-D arrays (full packets)
        self.sending = _payload_pieces(mine, c)
        if self.leads:
            # inboxes (header + a node's chunks) per parity; an any-source receive fits any node's packet
            most = max(size for _, _, size in self.others)
            self.inboxes = [[np.empty(H + (most if self.any_sender else size) * c, dtype=np.uint8)
                             for _, _, size in self.others] for _ in range(2)]
            # per other node: the (staging offset, packet offset, length) pieces its payload lands in
            self.landing = {m: _payload_pieces(topo.node_ranks[m], c) for m, _, _ in self.others}
            # _core.land_node_packet's table, when every node's payload is one piece: per sender, the
            # (offset, length) of its node's chunks (every rank of a node may send its packet)
            self.spans = None
            if all(len(self.landing[m]) == 1 for m, _, _ in self.others):
                self.spans = np.zeros((P, 2), dtype=np.int64)
                for m, _, size in self.others:
                    for s in topo.node_ranks[m]:
                        self.spans[s] = (self.landing[m][0][0], size * c)


def _payload_pieces(ranks, c):
    """(staging offset, packet offset, length) of the chunks of ``ranks`` in a packet's payload: one
    piece when the ranks are consecutive."""
    H = _packets.HEADER
    if list(ranks) == list(range(ranks[0], ranks[0] + len(ranks))):
        return [(ranks[0] * c, H, len(ranks) * c)]
    return [(q * c, H + i * c, c) for i, q in enumerate(ranks)]


def _other_nodes(topo):
    """(node, its leader, its number of ranks) of every other node."""
    return [(m, tree.leader(topo, topo.rank, m), len(topo.node_ranks[m])) for m in range(topo.num_nodes)
            if m != topo.node]


def _post_node_packet(g, plan, staging, rnd, seq, tag, window_id, local_error=None):
    """Post the sends of my node's chunks (all in the staging area) as one packet to every other
    node's leader: one fused message (header + payload) where the transport tolerates receives longer
    than the message, else header then payload. A disagreement inside my node travels as a packet
    without payload (payload_len 0), which its receivers turn into a MismatchError: ``local_error``
    (that disagreement, found by the caller), or found here by comparing the local ranks' signatures.
    Returns the send requests."""
    H = _packets.HEADER
    outbox = plan.outboxes[rnd.parity]
    if len(plan.sending) == 1:      # my node's chunks are one piece: header and payload in one call
        payload_len = 0 if local_error else plan.payload_len
        n = _core.pack_node_packets(outbox, staging, plan.packet_offset, payload_len, window_id, seq, g.rank,
                                    plan.packet_offset if payload_len else 0, plan.dests,
                                    plan.signature_slots[rnd.parity])
        payload_len = n - H
        if TRACE is not None: TRACE.append(("packed", _pc()))
    else:
        disagree = local_error is not None or g.round_mismatch(rnd, "") is not None
        payload_len = 0 if disagree else plan.payload_len
        if payload_len:
            for at, pos, n in plan.sending:
                outbox[0, pos:pos + n] = staging[at:at + n]
        for i, (m, leader, size) in enumerate(plan.others):
            if i and payload_len:
                outbox[i, H:] = outbox[0, H:]
            _core.build_header(outbox[i, :H], window_id=window_id, seq=seq, src_rank=g.rank, dest_node=m,
                               dest_bitmap=plan.bitmaps[i], offset=plan.packet_offset if payload_len else 0,
                               payload_len=payload_len)
    sends = []
    for i, (m, leader, size) in enumerate(plan.others):
        g.stats.add_inter(H + payload_len, m)
        if plan.fused:
            packet = plan.packets[rnd.parity][i] if payload_len else outbox[i, :H]
            sends.append(g.transport.isend(packet, leader, tag))
        else:
            sends += [g.transport.isend(outbox[i, :H], leader, tag),
                      g.transport.isend(outbox[i, H:H + payload_len], leader, tag)]
    if TRACE is not None: TRACE.append(("sent", _pc()))
    return sends


def _leader_exchange(g, plan, staging, rnd, seq, tag, window_id, what, sends):
    """The leader's part of the small path: land the other nodes' packets; with a transport that
    cannot receive from any source, also send my node's (``sends``: the requests of my node's packet
    if I sent it already, else None). Returns the first error (a failed packet is recorded with
    round_failed)."""
    H, fused, topo = _packets.HEADER, plan.fused, g.topo
    inboxes = plan.inboxes[rnd.parity]
    # Nothing agrees sizes across nodes before this exchange (another node's ranks may pass another
    # chunk size or take another path): the receives are not agreed (MPI: probed, see Transport.irecv).
    if plan.any_sender:
        recvs = [g.transport.irecv_any(box, tag, agreed=False) for box in inboxes]
    else:
        recvs = [g.recv(box, leader, tag, agreed=False) if fused
                 else _packets.PacketRecv(g, box[:H], box[H:], leader, tag, what, agreed=False)
                 for box, (m, leader, size) in zip(inboxes, plan.others)]

    # Wait for the chunks of my node (they are counted on a word of their own). A disagreement among
    # them is found by the rank that sends my node's packet and by round_wait at the end; without
    # any-source receives I send it and look for one here.
    try:
        g.round_wait_first(rnd, what)
        local_error = None if plan.any_sender else g.round_mismatch(rnd, what)
    except MismatchError as exc:     # a local rank took the other (barrier) path: no rank sent
        local_error = exc
        if sends is None:
            sends = _post_node_packet(g, plan, staging, rnd, seq, tag, window_id, local_error)
    if TRACE is not None: TRACE.append(("local_in", _pc()))
    if sends is None and not plan.any_sender:
        sends = _post_node_packet(g, plan, staging, rnd, seq, tag, window_id, local_error)

    error, pending = local_error, {m: (leader, size) for m, leader, size in plan.others}
    waiting_for = _PendingPackets(pending)
    for i, (m, leader, size) in enumerate(plan.others):
        box = inboxes[i]
        try:
            if TRACE is not None: TRACE.append(("recv_wait", _pc()))
            if plan.any_sender:      # for a timeout message
                recvs[i].description = waiting_for
            try:
                if fused:
                    _packets.wait_checked(g, [recvs[i]], what)
                else:
                    recvs[i].wait(g.timeout_s, what)
            except MismatchError:      # Gloo: a payload-less packet shows as a payload length mismatch
                disagreed = _node_disagreement(box, what, m, leader)
                if disagreed is None:
                    raise
                raise disagreed from None
            if TRACE is not None: TRACE.append(("recv_done", _pc()))
            if plan.spans is not None:     # one call when all is well; else the checks below say what is not
                sender = _core.land_node_packet(box, staging, window_id, seq, topo.local_size, plan.spans)
                if sender >= 0 and topo.node_of[sender] in pending and (plan.any_sender or sender == leader):
                    del pending[topo.node_of[sender]]
                    continue
            info = _packets.check(box[:H], what=what, window_id=window_id, seq=seq,
                                  src_rank=None if plan.any_sender else leader, **plan.check_args)
            if plan.any_sender:      # which node sent it: the header says
                sender = info["src_rank"]
                m = topo.node_of[sender] if 0 <= sender < g.size else None
                if m not in pending:
                    raise MismatchError(f"{what}: rank {info['src_rank']} sent a packet for node {m}, "
                                        f"but this rank expects one from each other node, once")
                leader, size = pending[m]
            pending.pop(m, None)
            disagreed = _node_disagreement(box, what, m, info["src_rank"])
            if disagreed is not None:
                raise disagreed
            _packets.check_payload_len(info, size * plan.c, what)
            for at, pos, n in plan.landing[m]:
                staging[at:at + n] = box[pos:pos + n]
        except MultiwriteTimeout:
            _packets.abandon(recvs)
            raise
        except Exception as exc:
            if fused:
                _discard_payload(g, recvs[i], box, tag)
            error = error or (exc if isinstance(exc, MultiwriteError) else MismatchError(f"{what}: {exc}"))
            g.round_failed(rnd, error)
    if sends is not None:
        error = _packets.finish_sends(g, what, sends, error)
    return error


class _PendingPackets:
    """The node packets a leader still waits for, as a timeout message names them (formatted only then)."""
    __slots__ = ("pending",)

    def __init__(self, pending):
        self.pending = pending

    def __str__(self):
        return f"the packet of node(s) {sorted(self.pending)} (sent by the rank whose chunk completes its node's)"


def _node_disagreement(box, what, node, sender):
    """The MismatchError that a payload-less packet in ``box`` stands for (the ranks of ``node``
    disagreed, see _post_node_packet), or None for a packet with payload."""
    if int(box[32:40].view(np.uint64)[0]) != 0:
        return None
    return MismatchError(f"{what}: the ranks of node {node} called it with different arguments (reported "
                         f"by rank {sender})")


def _discard_payload(g, req, box, tag):
    """After a failed fused receive: if it got a header alone that announces a payload, its sender is
    on the two-part path (the large AllGather: header, then payload as a message of its own) and
    nothing here receives that payload; the transport drains it when it comes (a large send does not
    complete until it is received, and a later call on the same tag must not take it)."""
    count = getattr(req, "count", None)
    if count is None or count() != _packets.HEADER:
        return
    try:
        sent = _core.parse_header(box[:_packets.HEADER])["payload_len"]
    except Exception:
        return
    if sent:
        g.transport.discard(req.source(), tag)


def _relay_exchange(g, staging, rnd, src, seq, tag, window_id, what):
    """Small path, per-rank variant: my chunk goes to my relay on every other node; I land the chunks
    of the remote sources I relay. Returns the first error (every chunk still counts as landed)."""
    topo = g.topo
    P, c, r, H = g.size, src.nbytes, g.rank, _packets.HEADER
    fused = not g.transport.exact_size_recv
    remote_nodes = [m for m in range(topo.num_nodes) if m != topo.node]
    senders = tree.relayed_by(topo, r, range(P))
    # Not agreed across nodes (a sender may pass another chunk size or take the large path), as in
    # _leader_exchange.
    if fused:
        inbox = g.private_buffer(f"allgather_small_rin{rnd.parity}", max(1, len(senders)) * (H + c)).reshape(-1, H + c)
        recvs = [g.recv(inbox[i], s, tag, agreed=False) for i, s in enumerate(senders)]
    else:
        headers_in = _packets.header_buffers(g, "allgather_small_hin", len(senders))
        recvs = [_packets.PacketRecv(g, headers_in[i], staging[s * c:(s + 1) * c], s, tag, what, agreed=False)
                 for i, s in enumerate(senders)]
    sends = []
    outbox = g.private_buffer(f"allgather_small_rout{rnd.parity}", len(remote_nodes) * (H + c)).reshape(-1, H + c)
    for i, hop in enumerate(tree.plan(topo, r, range(P))[1]):
        m, d = hop.node, hop.relay
        _packets.build(outbox[i, :H], window_id=window_id, seq=seq, src_rank=r, dest_node=m,
                       dest_bitmap=hop.bitmap, offset=r * c, payload_len=c)
        g.stats.add_inter(H + c, m)
        if fused:
            outbox[i, H:] = src
            sends.append(g.transport.isend(outbox[i], d, tag))
        else:
            sends += [g.transport.isend(outbox[i, :H], d, tag), g.transport.isend(src, d, tag)]
    error = None
    for i, s in enumerate(senders):
        try:
            if fused:
                _packets.wait_checked(g, [recvs[i]], what)
                header = inbox[i, :H]
            else:
                recvs[i].wait(g.timeout_s, what)
                header = headers_in[i]
            _packets.check(header, what=what, window_id=window_id, seq=seq, src_rank=s,
                           window_size=P * c, num_local_ranks=topo.local_size, payload_len=c)
            if fused:
                staging[s * c:(s + 1) * c] = inbox[i, H:]
        except MultiwriteTimeout:
            _packets.abandon(recvs)
            raise
        except Exception as exc:
            if fused:
                _discard_payload(g, recvs[i], inbox[i], tag)
            error = error or (exc if isinstance(exc, MultiwriteError) else MismatchError(f"{what}: {exc}"))
            g.round_failed(rnd, error)
        g.round_arrived(rnd)
    return _packets.finish_sends(g, what, sends, error)

