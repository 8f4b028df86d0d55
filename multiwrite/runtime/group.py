"""A communication group: transport + topology + node shared memory + accounting.

Every operator runs on a Group. The default group spans the launcher's world (mpirun or torchrun);
the torch backend and ``split`` make others. All methods named ``collective`` must be called by every
rank of the group in the same order.
"""
import atexit
import struct
import time
from typing import NamedTuple

import numpy as np

from .. import _config, _core, topology as _topology
from . import shm
from ..errors import MismatchError, MultiwriteError, MultiwriteTimeout, PeerFailure
from .stats import Stats
from ..transport import wait_all
from ..transport.base import configure_polling

# The node control segment: its layout is the C++ core's (struct NodeControl, csrc/sync.hpp).
_NC = _core.NODE_CONTROL
_BARRIER_OFF = _NC["barrier"]        # u32: node barrier arrivals, monotonically increasing
_NAME_OFF, _NAME_LEN = _NC["grow_name"], _NC["grow_name_len"]   # name of a segment being grown
_EPOCH_OFF = _NC["epoch"]            # u32 per local rank: barriers it has entered (to name missing ranks)
_SIG_OFF = _NC["sync"]               # two banks (by barrier parity) of one 64-byte slot per local rank
_SLOT = _NC["slot"]                  # 64 bytes
_LINE = _NC["line"]                  # a word on a cache line of its own
_SIG_WORDS = _SLOT // 8
_MAX_LOCAL = _core.MAX_LOCAL_RANKS
_ANNOUNCE = _NC["announce"]          # 64 bytes per local rank: (seq, signature) it entered
_ROUND_MSG, _ROUND_MSG_LEN = _NC["round_message"], _NC["round_message_len"]
_ROUND_ERR = _NC["round_error"]      # u32 per parity (own line): number of the round that failed
_ROUND_OWN = _NC["round_own"]        # u32 per parity (own line): the local ranks' own chunks landed
_ROUND_SIG = _NC["round_signature"]  # two banks of one 64-byte signature slot per local rank
_CTRL_BYTES = _NC["size"]

#: Bytes of the node staging area per round parity (rounds are for small operations only).
ROUND_STAGING_BYTES = 1 << 20
_SEQ_WORD = struct.Struct("<q")                 # an announcement's first word: the call's seq (-1 while written)
_SIG_TAIL = struct.Struct(f"<{_SIG_WORDS - 1}q")   # the rest of an announcement: the signature
_WAIT_SLICE_S = 0.02                 # how often a waiting rank checks its node peers' announcements
_ROUND_DONE, _ROUND_WAITING, _ROUND_FAILED = 0, 1, 2   # _core.round_collect's status (3: signatures differ)

_MIN_BUFFER = 1 << 20


class RoundHandle(NamedTuple):
    """One barrier-free round (Group.round_enter): staging bank ``parity``, round ``number``, the
    (seq, signature) this rank announced, the round counter's value before (``start``) and after
    (``end``) the round, whether a rank waits for the node's own chunks, and the own-chunk counter's
    value before the round. Counter values are mod 2**32 like the shared words."""
    parity: int
    number: int
    announced: tuple
    start: int
    end: int
    wait_first: bool
    own_start: int


#: What node_sync shares about a failure: the first of these classes the error is an instance of
#: (its kind is the index + 1), and the class the node's other ranks raise for it (another rank's
#: rejection of its own arguments is a disagreement between the ranks' calls).
_SYNC_KINDS = (MultiwriteTimeout, PeerFailure, MismatchError, MultiwriteError, Exception)
_SYNC_RAISE = (MultiwriteTimeout, PeerFailure, MismatchError, MultiwriteError, MismatchError)


def _sync_kind(error):
    """The kind (1, 2, ...) that shared memory records for ``error``: see _SYNC_KINDS."""
    return next(i for i, cls in enumerate(_SYNC_KINDS) if isinstance(error, cls)) + 1


def _sync_class(kind):
    """The class a node peer raises for a failure of ``kind`` (MismatchError for unknown kinds)."""
    return _SYNC_RAISE[kind - 1] if 1 <= kind <= len(_SYNC_RAISE) else MismatchError


def _not_arrived(ranks):
    """The part of a timeout message that names the local ranks that never arrived."""
    return f"rank(s) {ranks} of this node did not arrive (died, hang, or called a different operation)"


class Group:
    """Ranks that communicate together (see module doc). ``topo`` describes placement."""

    def __init__(self, transport, *, mode=None, timeout_s=None, global_ranks=None):
        configure_polling(*_config.validate_all())
        self.transport = transport
        self.timeout_s = _config.check_timeout(timeout_s) if timeout_s is not None else _config.timeout_s()
        self.mode = _config.check_mode(mode)
        self.piece_bytes = _config.piece_bytes()   # see _packets.pieces
        self.topo = _topology.detect(transport, global_ranks)
        if self.topo.local_size > _MAX_LOCAL:
            raise MultiwriteError(f"{self.topo.local_size} ranks on one node; at most {_MAX_LOCAL} supported")
        self.stats = Stats(self.topo.rack_of_node, self.topo.rack)
        self._seq = 0
        self._epoch = 0
        self._buffers = {}          # name -> Segment (node-shared, grown on demand)
        self._private = {}          # name -> numpy buffer private to this rank
        self._extensions = {}       # key -> per-group state of another layer (see extension)
        self._close_callbacks = []
        self._closed = False
        self._rounds = 0
        self._round_target = [0, 0]
        if self.topo.rank == self.topo.leader:
            # Segments a killed leader could not unlink: a live one is unlinked at most two timeouts
            # after its creation (the waits between creating and unlinking it).
            shm.sweep_stale(2 * max(self.timeout_s, transport.timeout_s) + 60)
        # Control words + the staging area of barrier-free rounds (2 parities; pages are only
        # allocated by the kernel when touched).
        self._ctrl_seg, self._round_seg = shm.create_node_segments(
            transport, self.topo, [_CTRL_BYTES, 2 * ROUND_STAGING_BYTES])
        self.ctrl = self._ctrl_seg.array
        # the round staging banks, and the topology values the per-call round steps use
        self._round_banks = [self._round_seg.array[p * ROUND_STAGING_BYTES:(p + 1) * ROUND_STAGING_BYTES]
                             for p in (0, 1)]
        self._local_rank, self._local_size = self.topo.local_rank, self.topo.local_size
        self._ctrl_view = memoryview(self.ctrl)     # struct.pack_into: 10x cheaper than NumPy for a slot
        self.rank, self.size = self.topo.rank, self.topo.world_size

    # -- state of other layers ------------------------------------------------------------
    def extension(self, key, factory):
        """The per-group state that another layer keeps under ``key`` (an operator's precomputed
        plans, the relay service, ...), made by ``factory()`` on first use and dropped when the group
        closes. The runtime never looks inside."""
        ext = self._extensions.get(key)
        if ext is None:
            ext = self._extensions[key] = factory()
        return ext

    def on_close(self, callback):
        """Call ``callback()`` when the group is closed (collectively, before its transport closes)."""
        self._close_callbacks.append(callback)

    # -- sequencing ----------------------------------------------------------------------
    def next_seq(self) -> int:
        """Operation sequence number: equal on every rank for the same collective call."""
        self._check_open()
        self._seq += 1
        return self._seq

    def _check_open(self):
        if self._closed:
            raise MultiwriteError("this multiwrite group has been destroyed")

    # -- node-local synchronisation ---------------------------------------------------------
    def node_barrier(self, what="node barrier", announced=None):
        """All ranks of this node arrive before any leaves (shared-memory futex, no network).
        ``announced``: (seq, signature) this rank published with ``announce``; while waiting, a node
        peer that entered the same call with another signature raises MismatchError."""
        target = self._arrive(wake_always=False)
        if not self._wait_word(_BARRIER_OFF, target, what, announced):
            missing = [r for r in self.topo.local_ranks
                       if _core.atomic_load_u32(self.ctrl, _EPOCH_OFF + 4 * self.topo.local_rank_of[r])
                       < (self._epoch & 0xFFFFFFFF)]
            raise MultiwriteTimeout(f"{what}: timed out after {self.timeout_s:g}s; {_not_arrived(missing)}")

    def _arrive(self, wake_always):
        """Count this rank's arrival at the next node barrier; returns the barrier counter's value once
        every local rank has arrived. The epoch word is stored before the arrival is counted, so a
        waiter that sees the count also sees who arrived (timeout messages, node_sync_each). Without
        ``wake_always`` only the last arrival wakes the waiters: a wake per arrival costs every waiter
        a context switch, which on an oversubscribed host is most of a small operation's time."""
        self._epoch += 1
        _core.atomic_store_u32(self.ctrl, _EPOCH_OFF + 4 * self.topo.local_rank, self._epoch & 0xFFFFFFFF)
        target = (self._epoch * self.topo.local_size) & 0xFFFFFFFF
        if _core.atomic_add_u32(self.ctrl, _BARRIER_OFF, 1, False) == target or wake_always:
            _core.futex_wake(self.ctrl, _BARRIER_OFF)
        return target

    def _wait_word(self, offset, target, what, announced):
        """wait_u32_ge on a control word; with ``announced``, checks the peers' announcements between
        short slices (a peer stuck in a different kind of wait would otherwise cost a full timeout)."""
        return self._wait_sliced(lambda t: _core.wait_u32_ge(self.ctrl, offset, target, t), what, announced, False)

    def _wait_sliced(self, wait, what, announced, waiting):
        """Call ``wait(timeout_s)`` until it returns something other than ``waiting`` or the group's
        timeout passes; returns its last result. With ``announced``, in slices of _WAIT_SLICE_S with
        check_announcements between them; without, one call."""
        if announced is None:
            return wait(self.timeout_s)
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            result = wait(max(0.0, min(_WAIT_SLICE_S, left)))
            if result != waiting or left <= _WAIT_SLICE_S:
                return result
            self.check_announcements(what, *announced)

    def announce(self, seq, signature):
        """Publish (seq, signature) of the collective this rank is entering (no waiting).

        Peers read the slot while it may be written (check_announcements), so it is written like a
        seqlock: seq word invalid, then the signature, then the seq. A reader that sees the same seq
        before and after reading the signature has read one announcement whole (a torn read once
        paired a new seq with the zero padding of the previous, shorter signature: a false
        MismatchError after 18 minutes of stress)."""
        signature = tuple(int(v) for v in signature)
        offset = _ANNOUNCE + _SLOT * self.topo.local_rank
        _SEQ_WORD.pack_into(self._ctrl_view, offset, -1)
        _SIG_TAIL.pack_into(self._ctrl_view, offset + 8, *signature, *(0,) * (_SIG_WORDS - 1 - len(signature)))
        _SEQ_WORD.pack_into(self._ctrl_view, offset, seq)
        return seq, signature

    def check_announcements(self, what, seq, signature):
        """MismatchError if a node peer entered call ``seq`` on another path: the last element of the
        signature names the path (e.g. barrier-free vs barrier), and ranks on different paths would
        otherwise wait for each other until the timeout. Other differences are found by the path."""
        n, view = len(signature), self._ctrl_view
        for i in range(self.topo.local_size):
            offset = _ANNOUNCE + _SLOT * i
            if _SEQ_WORD.unpack_from(view, offset)[0] != seq:
                continue
            theirs = _SIG_TAIL.unpack_from(view, offset + 8)[:n]
            if _SEQ_WORD.unpack_from(view, offset)[0] != seq:
                continue            # rewritten while read (see announce): the peer has moved on
            if theirs[n - 1] != signature[-1]:
                raise MismatchError(
                    f"{what}: rank {self.topo.local_ranks[i]} of this node called it with different arguments "
                    f"{theirs} vs {signature} on this rank; this group's node state is no longer consistent, "
                    f"create a new group")

    def node_agree(self, what, signature, need_bytes=0, seq=None):
        """Node barrier that also compares what every local rank called: ``signature`` is up to 7
        integers. Returns ``(largest need_bytes of the node, MismatchError or None)``.

        The error is returned, not raised, so the caller can still exchange its packets: the ranks
        of other nodes then detect the disagreement from the packet headers instead of timing out.
        """
        sig = np.zeros(_SIG_WORDS, dtype=np.int64)
        sig[:len(signature)] = signature
        sig[_SIG_WORDS - 1] = need_bytes
        # Alternate banks: a fast rank's next signature cannot overwrite one a slow rank still reads,
        # because it would need to pass another barrier that the slow rank has not entered yet.
        bank = _SIG_OFF + _SLOT * _MAX_LOCAL * ((self._epoch + 1) % 2)
        slot = bank + _SLOT * self.topo.local_rank
        self.ctrl[slot:slot + _SLOT] = sig.view(np.uint8)
        self.node_barrier(what, None if seq is None else self.announce(seq, signature))
        sigs = self.ctrl[bank:bank + _SLOT * self.topo.local_size].view(np.int64).reshape(-1, _SIG_WORDS).copy()
        n = len(signature)
        error = None
        if (sigs[:, :n] != sigs[0, :n]).any():
            rows = ", ".join(f"rank {self.topo.local_ranks[i]}: {tuple(int(v) for v in sigs[i, :n])}"
                             for i in range(self.topo.local_size))
            error = MismatchError(f"{what}: ranks of node {self.topo.node} called it with different "
                                  f"arguments ({rows})")
        return int(sigs[:, _SIG_WORDS - 1].max()), error

    def node_sync(self, what, error=None):
        """Node barrier that also shares failure: if any local rank passes an ``error``, every local
        rank raises (its own error, or a MismatchError naming the failed rank), so that a problem
        one rank detected never leaves its node peers waiting for a timeout."""
        bank = self._post_sync_status(error)
        self.node_barrier(what)
        if error is not None:
            raise error
        for i in range(self.topo.local_size):
            failed = self._peer_failure(bank, i, what)
            if failed is not None:
                raise failed

    def _post_sync_status(self, error):
        """Write this rank's failure kind (0 none, else see _SYNC_KINDS) and message into its slot of the
        signature bank of the next barrier (the bank alternates, so a fast peer's next sync cannot
        overwrite it while a slow one still reads it). Returns the bank's offset."""
        bank = _SIG_OFF + _SLOT * _MAX_LOCAL * ((self._epoch + 1) % 2)
        slot = self.ctrl[bank + _SLOT * self.topo.local_rank:bank + _SLOT * (self.topo.local_rank + 1)]
        text = str(error).encode()[:56] if error is not None else b""
        kind = 0 if error is None else _sync_kind(error)
        slot[:8] = np.frombuffer(np.int64(kind).tobytes(), dtype=np.uint8)
        slot[8:] = 0
        slot[8:8 + len(text)] = np.frombuffer(text, dtype=np.uint8)
        return bank

    def _peer_failure(self, bank, i, what):
        """The error naming local rank index ``i`` if it posted a failure in ``bank`` (MultiwriteTimeout
        for a timeout, else MismatchError), or None."""
        other = self.ctrl[bank + _SLOT * i:bank + _SLOT * (i + 1)]
        kind = int(other[:8].view(np.int64)[0])
        if not kind:
            return None
        msg = bytes(other[8:]).rstrip(b"\0").decode(errors="replace")
        # the peer's failure is this rank's too (what it waited for will not come): the same class
        return _sync_class(kind)(f"{what}: rank {self.topo.local_ranks[i]} of this node failed: {msg}...")

    def node_sync_each(self, what, error, on_arrival):
        """``node_sync`` that calls ``on_arrival(i)`` for each local rank index ``i`` as soon as that
        rank has arrived (its own first, then the others in the order they come), while the rest are
        still on their way: a rank's work that depends only on one peer's part overlaps the wait for
        the slowest peer. Every arrival wakes the waiters (one context switch each), so use it where
        the work per arrival is worth that. Errors are shared as in ``node_sync``; with any error no
        ``on_arrival`` runs after it is seen."""
        bank = self._post_sync_status(error)
        L, me = self.topo.local_size, self.topo.local_rank
        base = (self._arrive(wake_always=True) - L) & 0xFFFFFFFF     # the counter before this barrier
        epoch = self._epoch & 0xFFFFFFFF
        failed = error
        done = [False] * L

        def visit(i):
            nonlocal failed
            done[i] = True
            if failed is None:
                failed = self._peer_failure(bank, i, what)
            if failed is None:
                on_arrival(i)

        visit(me)
        deadline = time.monotonic() + self.timeout_s
        while not all(done):
            # Read the count first: an arrival after this read makes the wait below return at once. A
            # peer's epoch word is stored before its arrival is counted, and its error slot before that.
            count = (_core.atomic_load_u32(self.ctrl, _BARRIER_OFF) - base) & 0xFFFFFFFF
            arrived = [i for i in range(L) if not done[i]
                       and ((_core.atomic_load_u32(self.ctrl, _EPOCH_OFF + 4 * i) - epoch) & 0xFFFFFFFF) < 1 << 31]
            for i in arrived:
                visit(i)
            if arrived:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [self.topo.local_ranks[i] for i in range(L) if not done[i]]
                raise MultiwriteTimeout(f"{what}: timed out after {self.timeout_s:g}s; {_not_arrived(missing)}")
            _core.wait_u32_ge(self.ctrl, _BARRIER_OFF, (base + count + 1) & 0xFFFFFFFF, min(left, _WAIT_SLICE_S))
        if failed is not None:
            raise failed

    # -- barrier-free node rounds ------------------------------------------------------------------
    # A small collective needs no node barrier: every chunk that lands in the node's staging area
    # (written by its owner, or by the relay that received it) bumps the round's counter, and each
    # rank waits until the counter says all chunks are there. Rounds alternate between two staging
    # banks: a rank can only start round n+2 after round n+1 completed on its node, which needed every
    # local rank's own chunk of n+1, written after that rank had finished reading round n. The local
    # ranks' own chunks are also counted on a word of their own, which only round_wait_first sleeps on:
    # ranks waiting for the whole round are not woken when the node's own chunks are complete.
    def round_enter(self, seq, signature, arrivals, src, offset, wait_first=False, wake_first=True):
        """Enter the next round with my own chunk ``src`` (uint8), written at ``offset`` of the round's
        staging bank. ``signature``: up to 7 ints all local ranks must agree on; ``arrivals``: how many
        chunks land on this node in the round (the same on every local rank); ``wait_first``: a rank
        will call round_wait_first for the node's own chunks. The announcement, the copy and the
        counts are one C++ call (_core.round_put): on a host with more ranks than cores, each rank's
        work before its chunk is in is time the whole node waits for.
        Returns (staging uint8 [ROUND_STAGING_BYTES], a RoundHandle, whether my chunk completed the
        node's own chunks). Then a round_wait_first waiter is woken here with ``wake_first``;
        without, the caller wakes it with round_wake_first (after work that should not wait for the
        CPU the woken rank takes)."""
        self._rounds += 1
        parity = self._rounds & 1
        start = self._round_target[parity]       # counter value once every earlier round is complete
        self._round_target[parity] += arrivals
        end = self._round_target[parity]
        # every earlier round of this parity added one own chunk per local rank
        own_start = ((self._rounds - 1) // 2 * self._local_size) & 0xFFFFFFFF
        target = (own_start + self._local_size) & 0xFFFFFFFF
        me, staging = self._local_rank, self._round_banks[parity]
        own = _core.round_put(self.ctrl, staging, src, offset, parity, target if wait_first and wake_first else -1,
                              start & 0xFFFFFFFF, end & 0xFFFFFFFF, (me, seq, signature))
        handle = RoundHandle(parity, self._rounds, (seq, signature), start, end, wait_first, own_start)
        return staging, handle, own == target

    def round_wait_first(self, handle, what):
        """Wait until the node's own chunks (one per local rank) have landed (round_enter)."""
        target = (handle.own_start + self.topo.local_size) & 0xFFFFFFFF
        if not self._wait_word(_ROUND_OWN + _LINE * handle.parity, target, what, handle.announced):
            raise MultiwriteTimeout(f"{what}: timed out after {self.timeout_s:g}s waiting for the chunks of "
                                    f"this node's ranks; {self._not_entered(handle.announced[0])}")

    def _not_entered(self, seq):
        """For a timeout message: which local ranks have not announced call ``seq`` yet (the rank
        that died or hangs, or a survivor stuck in an earlier call waiting for it)."""
        behind = [self.topo.local_ranks[i] for i in range(self.topo.local_size)
                  if 0 <= _SEQ_WORD.unpack_from(self._ctrl_view, _ANNOUNCE + _SLOT * i)[0] < seq]
        if behind:
            return _not_arrived(behind)
        return ("every rank of this node entered the call: a rank of another node died, hangs, or called a "
                "different operation")

    def round_wake_first(self, handle):
        """Wake the round_wait_first waiter (see round_enter)."""
        _core.futex_wake(self.ctrl, _ROUND_OWN + _LINE * handle.parity)

    def round_arrived(self, handle, count=1):
        """``count`` chunks are in the staging area (call after writing them). Wakes the waiters only
        when the round is complete: each wake costs every waiter a context switch, and on a host with
        more ranks than cores the woken ranks take the CPU from the ones still working."""
        _core.round_arrive(self.ctrl, handle.parity, count, handle.start & 0xFFFFFFFF,
                           handle.end & 0xFFFFFFFF)

    def round_failed(self, handle, error):
        """Record that this round failed on this node (call before round_arrived of the chunk)."""
        parity, number = handle.parity, handle.number
        # byte 0: the failure's kind (see _SYNC_KINDS), so the node's ranks raise the same class
        text = bytes([_sync_kind(error)]) + str(error).encode()[:_ROUND_MSG_LEN - 2]
        msg = self.ctrl[_ROUND_MSG + _ROUND_MSG_LEN * parity:_ROUND_MSG + _ROUND_MSG_LEN * (parity + 1)]
        msg[:] = 0
        msg[:len(text)] = np.frombuffer(text, dtype=np.uint8)
        _core.atomic_store_u32(self.ctrl, _ROUND_ERR + _LINE * parity, number & 0xFFFFFFFF)

    def round_wait(self, handle, what, error=None, out=None, staging=None, arrive=0):
        """Wait until every chunk of the round landed; then raise ``error``, or a MismatchError if a
        local rank's signature differs or a relay on this node recorded a failure. With ``out``
        (uint8), copy out[:] = staging[:out.nbytes] once the round is complete and correct (in the
        same C++ call as the wait and the checks). ``arrive``: the caller landed the round's last
        ``arrive`` chunks itself; they are counted (round_arrived) after ``out`` is copied, so the
        ranks this wakes do not take the CPU before the copy is done."""
        parity, number, announced = handle.parity, handle.number, handle.announced
        if error is not None:
            out = None
        args = (self.ctrl, parity, handle.end & 0xFFFFFFFF)
        checks = (number & 0xFFFFFFFF, 8 * len(announced[1]), self._local_size, staging, out)
        if arrive and error is None:      # my arrival completes the round: no waiting, so no slices
            status = _core.round_collect(*args, self.timeout_s, *checks, (arrive, handle.start & 0xFFFFFFFF))
        else:
            if arrive:
                self.round_arrived(handle, arrive)
            status = self._wait_sliced(lambda t: _core.round_collect(*args, t, *checks), what, announced,
                                       _ROUND_WAITING)
        if status == _ROUND_WAITING:
            raise MultiwriteTimeout(f"{what}: timed out after {self.timeout_s:g}s waiting for the node's "
                                    f"chunks; {self._not_entered(announced[0])}")
        if status == _ROUND_DONE and error is None:
            return
        if error is not None:
            raise error
        if status == _ROUND_FAILED:
            msg = bytes(self.ctrl[_ROUND_MSG + _ROUND_MSG_LEN * parity:_ROUND_MSG + _ROUND_MSG_LEN * (parity + 1)])
            raise _sync_class(msg[0])(f"{what}: a relay of this node failed: "
                                      f"{msg[1:].rstrip(bytes(1)).decode(errors='replace')}")
        raise self.round_mismatch(handle, what) or MismatchError(f"{what}: the ranks of node {self.topo.node} "
                                                                 f"called it with different arguments")

    def round_signature_slots(self, parity, n):
        """(ctrl, parity, bytes, local ranks) of the signature slots of round bank ``parity`` for
        signatures of ``n`` values: what _core.pack_node_packets compares."""
        return self.ctrl, parity, 8 * n, self._local_size

    def round_mismatch(self, handle, what):
        """MismatchError if the local ranks that entered the round disagree on its signature (valid
        once their chunks have landed), else None."""
        parity, announced = handle.parity, handle.announced
        n = len(announced[1])
        bank = _ROUND_SIG + _SLOT * _MAX_LOCAL * parity
        view = self._ctrl_view
        first = view[bank:bank + 8 * n]
        if all(view[bank + _SLOT * i:bank + _SLOT * i + 8 * n] == first for i in range(1, self.topo.local_size)):
            return None
        sigs = self.ctrl[bank:bank + _SLOT * self.topo.local_size].view(np.int64).reshape(-1, _SIG_WORDS)[:, :n]
        rows = ", ".join(f"rank {self.topo.local_ranks[i]}: {tuple(int(v) for v in sigs[i])}"
                         for i in range(self.topo.local_size))
        return MismatchError(f"{what}: ranks of node {self.topo.node} called it with different "
                             f"arguments ({rows})")

    # -- node-shared buffers ------------------------------------------------------------------
    def node_buffer(self, name, nbytes):
        """A node-shared uint8 buffer of at least ``nbytes``. Must follow a node_agree on this node
        whose need_bytes gave ``nbytes`` (so all local ranks grow it together)."""
        seg = self._buffers.get(name)
        if seg is not None and seg.nbytes >= nbytes:
            return seg.array
        size = max(_MIN_BUFFER, 1 << max(0, int(nbytes - 1).bit_length()))
        name_slot = self.ctrl[_NAME_OFF:_NAME_OFF + _NAME_LEN]
        created = None
        try:
            failure = None
            if self.topo.rank == self.topo.leader:
                created = shm.Segment.new_name()
                try:
                    new = shm.Segment(created, size, create=True)
                    raw = created.encode()
                except (OSError, MultiwriteError) as e:      # the node's peers read why, not a timeout
                    failure = e
                    raw = b"!" + str(e).encode()[:_NAME_LEN - 2]
                name_slot[:] = 0
                name_slot[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            self.node_barrier(f"growing shared buffer '{name}'")
            if failure is not None:
                raise failure
            if created is None:
                seg_name = bytes(name_slot).rstrip(b"\0").decode()
                if seg_name.startswith("!"):
                    raise MultiwriteError(f"growing shared buffer '{name}' to {size} bytes failed on this "
                                          f"node's leader: {seg_name[1:]}")
                new = shm.Segment(seg_name, size, create=False)
            self.node_barrier(f"growing shared buffer '{name}'")
        finally:
            if created is not None:
                shm.Segment.unlink(created)
        if seg is not None:
            seg.close()
        self._buffers[name] = new
        return new.array

    def private_buffer(self, name, nbytes):
        """A reusable buffer private to this rank (grown on demand)."""
        buf = self._private.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = np.empty(max(nbytes, 4096), dtype=np.uint8)
            self._private[name] = buf
        return buf[:nbytes]

    # -- transport with accounting --------------------------------------------------------------
    def send(self, buf, dst, tag):
        node = self.topo.node_of[dst]
        if node == self.topo.node:
            raise AssertionError("intra-node data must go through shared memory, not the transport")
        self.stats.add_inter(buf.nbytes, node)
        return self.transport.isend(buf, dst, tag)

    def recv(self, buf, src, tag, *, agreed=True):
        """Receive from ``src`` on ``tag`` into ``buf``; ``agreed=False`` when the message's size comes
        from the sender's own arguments (see Transport.irecv)."""
        return self.transport.irecv(buf, src, tag, agreed=agreed)

    def wait_all(self, requests, what):
        wait_all(requests, self.timeout_s, what)

    def allgather_obj(self, obj):
        self.stats.add_control(64)
        return self.transport.allgather_obj(obj)

    # -- lifetime --------------------------------------------------------------------------
    def close(self):
        if self._closed:
            return
        self._closed = True
        for callback in self._close_callbacks:
            callback()
        for seg in self._buffers.values():
            seg.close()
        self._buffers.clear()
        self._private.clear()
        self._extensions.clear()
        self._round_banks = None
        self.ctrl = None
        self._ctrl_view.release()
        self._ctrl_seg.close()
        self._round_seg.close()
        self.transport.close()


def tag_for(op_id, seq):
    """Message tag of one operation: distinct per operation kind and per consecutive call."""
    return op_id + 64 * (seq % 32768)


# -- the default group ------------------------------------------------------------------------
_default = None


def init(transport=None, *, mode=None, timeout=None) -> Group:
    """Create the default group (idempotent). ``transport``: 'mpi', 'gloo', a Transport, or None for
    MULTIWRITE_TRANSPORT / what the launcher implies. ``timeout``: seconds (MULTIWRITE_TIMEOUT)."""
    global _default
    if _default is not None:
        return _default
    from .. import transport as _transport
    if transport is None or isinstance(transport, str):
        # A bad setting on this rank is raised after every rank has compared its start-up state, so
        # that the others raise at once too (transport.create)
        kind, timeout_s, state, error = _config.local_state(transport, timeout)
        transport = _transport.create(kind, timeout_s, state, error)
    else:
        timeout_s = _config.check_timeout(timeout) if timeout is not None else _config.timeout_s()
    _default = Group(transport, mode=mode, timeout_s=timeout_s)
    return _default


def set_default_group(group):
    global _default
    _default = group


def default_group() -> Group:
    """The default group, created on first use from the launcher's environment."""
    return _default if _default is not None else init()


def resolve(group) -> Group:
    g = default_group() if group is None else group
    g._check_open()
    return g


def finalize():
    """Destroy the default group (also done at interpreter exit)."""
    global _default
    g, _default = _default, None
    if g is not None:
        g.close()


atexit.register(finalize)
