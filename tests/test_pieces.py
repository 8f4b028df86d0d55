"""Pure logic of packets sent in pieces: the cuts both sides derive (_packets.pieces), the one-in-flight
send window (_packets.PieceSender, driven by in-process fake requests: the real transports are covered
by the multi-process MoE tests), and the arrival words of dispatch (_arrived across call numbers)."""
import types

import pytest
from hypothesis import given, settings, strategies as st

from multiwrite.engine import packets as _packets
from multiwrite.errors import MismatchError
from multiwrite.ops.moe.dispatch import _FAILED, _TIMED_OUT, _arrival_base, _arrived


PIECE = 512 << 10


def _group(exact_size_recv=False):
    return types.SimpleNamespace(transport=types.SimpleNamespace(exact_size_recv=exact_size_recv),
                                 piece_bytes=PIECE)


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(0, 1 << 16), row_bytes=st.integers(1, 1 << 16))
def test_pieces_cover_the_rows_in_order(rows, row_bytes):
    cuts = _packets.pieces(_group(), rows, row_bytes)
    assert cuts[0] == 0 and cuts[-1] == rows
    assert all(a <= b for a, b in zip(cuts, cuts[1:]))
    n = len(cuts) - 1
    assert 1 <= n <= _packets.MAX_PIECES
    if n < _packets.MAX_PIECES:        # below the cap, no piece is much above the target size
        assert max(b - a for a, b in zip(cuts, cuts[1:])) * row_bytes <= PIECE + row_bytes
    if rows * row_bytes <= PIECE:
        assert cuts == [0, rows]


def test_pieces_one_on_exact_size_transports():
    assert _packets.pieces(_group(exact_size_recv=True), 10_000, 4096) == [0, 10_000]
    assert len(_packets.pieces(_group(), 10_000, 4096)) - 1 == _packets.MAX_PIECES


class _FakeRequest:
    """Completes when the test says so."""

    def __init__(self, log, name):
        self.done = False
        log.append(name)

    def test(self):
        return self.done


class _FakeGroup:
    def __init__(self):
        self.waited = []

    def wait_all(self, requests, what):
        for q in requests:
            q.done = True
        self.waited.append(len(requests))


def test_piece_sender_keeps_one_piece_in_flight_per_destination():
    g, log = _FakeGroup(), []
    sender = _packets.PieceSender(g)
    reqs = {}

    def post(name):
        reqs[name] = [_FakeRequest(log, name), _FakeRequest([], name)]      # header + payload
        return reqs[name]

    for i in range(3):
        sender.add(1, lambda i=i: post(f"a{i}"))
        sender.add(2, lambda i=i: post(f"b{i}"))
    assert log == ["a0", "b0"]                      # one per destination, posted by add()
    assert sender.pump() is True and log == ["a0", "b0"]
    reqs["a0"][0].done = True
    assert sender.pump() is True and log == ["a0", "b0"]    # its payload is still in flight
    reqs["a0"][1].done = True
    sender.pump()
    assert log == ["a0", "b0", "a1"]
    sender.finish("test")                           # posts the rest, waiting for room
    assert log == ["a0", "b0", "a1", "a2", "b1", "b2"]
    assert all(q.done for r in reqs.values() for q in r)
    assert len(sender.requests) == 12
    assert sender.pump() is False                  # nothing queued or in flight


def test_finish_sends_takes_a_piece_sender():
    g = _FakeGroup()
    sender = _packets.PieceSender(g)
    sender.add(0, lambda: [_FakeRequest([], "x")])
    sender.add(0, lambda: [_FakeRequest([], "y")])
    assert _packets.finish_sends(g, "test", sender) is None
    assert all(q.done for q in sender.requests) and len(sender.requests) == 2


@pytest.mark.parametrize("seq", [1, 2, 1000, (1 << 28) - 1, 1 << 28, (1 << 28) + 1, (1 << 32) + 5])
def test_arrival_words_across_calls(seq):
    base = _arrival_base(seq)
    prev = _arrival_base(seq - 1)
    for landed in range(0, 9):
        assert _arrived(prev + landed & 0xFFFFFFFF, base) == 0      # a word of the previous call
        assert _arrived(base + landed & 0xFFFFFFFF, base) == landed
    assert _arrived(prev + _FAILED & 0xFFFFFFFF, base) == 0
    assert _arrived(base + _FAILED & 0xFFFFFFFF, base) == -1
    assert _arrived(base + _TIMED_OUT & 0xFFFFFFFF, base) == -2
    assert _arrived(prev + _TIMED_OUT & 0xFFFFFFFF, base) == 0
    assert _packets.MAX_PIECES < _TIMED_OUT       # a count of landed pieces never reads as a failure


def test_check_piece_rejects_a_piece_at_another_offset():
    import numpy as np
    header = np.zeros(_packets.HEADER, dtype=np.uint8)
    _packets.build(header, window_id=2, seq=7, src_rank=3, dest_node=0, dest_bitmap=1, offset=4096,
                   payload_len=1024)
    expected = dict(what="dispatch (call #7)", window_id=2, seq=7, src_rank=3, window_size=8192,
                    num_local_ranks=2, payload_len=1024)
    assert _packets.check_piece(header, offset=4096, **expected)["offset"] == 4096
    with pytest.raises(MismatchError, match="rank 3 sent a piece at offset 4096, this rank expects offset 0"):
        _packets.check_piece(header, offset=0, **expected)


@pytest.mark.parametrize("raw, error", [("abc", "not an integer"), ("8", "must be >= 16")])
def test_piece_size_setting_errors(monkeypatch, raw, error):
    from multiwrite import _config
    monkeypatch.setenv("MULTIWRITE_PIECE_KIB", raw)
    with pytest.raises(ValueError, match=error):
        _config.piece_bytes()


def test_piece_size_setting(monkeypatch):
    from multiwrite import _config
    monkeypatch.delenv("MULTIWRITE_PIECE_KIB", raising=False)
    assert _config.piece_bytes() == 2 << 20
    monkeypatch.setenv("MULTIWRITE_PIECE_KIB", "256")
    assert _config.piece_bytes() == 256 << 10
