"""Fuzz: random, truncated, extended and bit-flipped buffers into parse_packet, parse_header,
fanout_counts and unpack_records. Each input is either accepted (and then consistent) or rejected
with ValueError; nothing crashes or writes outside its outputs."""
import numpy as np
import pytest

from multiwrite import _core as c

N_PER_FUNCTION = 12_000
pytestmark = pytest.mark.timeout(300)


def _valid_packet(rng):
    ndest = int(rng.integers(1, 6))
    bitmap = 0
    for b in rng.choice(8, size=ndest, replace=False):
        bitmap |= 1 << int(b)
    payload = rng.integers(0, 256, size=int(rng.integers(0, 100)), dtype=np.uint8)
    per_dest = bool(rng.integers(0, 2))
    out = np.zeros(c.header_size(ndest), np.uint8)
    n = c.build_header(out, window_id=int(rng.integers(0, 4)), seq=int(rng.integers(0, 2**63)),
                       src_rank=int(rng.integers(0, 16)), dest_node=int(rng.integers(0, 4)), dest_bitmap=bitmap,
                       offset=0 if per_dest else int(rng.integers(0, 64)), payload_len=payload.size,
                       flags=int(rng.choice([0, c.FLAG_NOTIFY])),
                       payload=payload if rng.integers(0, 2) else None,
                       dest_offsets=rng.integers(0, 64, size=ndest).astype(np.uint64) if per_dest else None)
    return np.concatenate([out[:n], payload])


def _rechecksum(buf):
    if buf.size >= 64:
        buf[56:60] = np.frombuffer(np.uint32(c.crc32c(buf[:56])).tobytes(), np.uint8)


def _mutate(rng, buf, record_size=None):
    buf = buf.copy()
    op = int(rng.integers(0, 7))
    if op == 0 and buf.size:                                   # truncate
        buf = buf[:int(rng.integers(0, buf.size))].copy()
    elif op == 1:                                              # extend
        buf = np.concatenate([buf, rng.integers(0, 256, size=int(rng.integers(1, 40)), dtype=np.uint8)])
    elif op in (2, 3) and buf.size:                            # flip bits (op 3: in the first 64 bytes)
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, min(buf.size, 64) if op == 3 else buf.size))
            buf[i] ^= np.uint8(1 << int(rng.integers(0, 8)))
    elif op == 4 and buf.size >= 8:                            # overwrite a random 8-byte field
        i = int(rng.integers(0, buf.size // 8)) * 8
        buf[i:i + 8] = rng.integers(0, 256, size=8, dtype=np.uint8)
    elif op == 5:                                              # pure noise
        buf = rng.integers(0, 256, size=int(rng.integers(0, 300)), dtype=np.uint8)
    elif op == 6 and record_size and buf.size >= 2 * record_size:   # swap two records
        a, b = rng.choice(buf.size // record_size, size=2, replace=False)
        ra = buf[a * record_size:(a + 1) * record_size].copy()
        buf[a * record_size:(a + 1) * record_size] = buf[b * record_size:(b + 1) * record_size]
        buf[b * record_size:(b + 1) * record_size] = ra
    return buf


def test_fuzz_parse_packet_and_header():
    rng = np.random.default_rng(1234)
    accepted = rejected = 0
    for i in range(N_PER_FUNCTION):
        buf = _mutate(rng, _valid_packet(rng))
        if rng.integers(0, 2):
            _rechecksum(buf)                                   # reach the checks behind the checksum
        window = None if rng.integers(0, 3) == 0 else int(rng.integers(0, 200))
        nl = None if rng.integers(0, 3) == 0 else int(rng.integers(1, 9))
        for parse in (c.parse_packet, c.parse_header):
            try:
                info = parse(buf, window_size=window, num_local_ranks=nl)
            except c.PacketError:
                rejected += 1
                continue
            accepted += 1
            assert info["dest_bitmap"] != 0
            if nl is not None:
                assert info["dest_bitmap"] >> nl == 0
            if parse is c.parse_packet:
                assert info["payload_offset"] + info["payload_len"] == buf.size
                if window is not None:
                    assert all(o + info["payload_len"] <= window for o in info["dest_offsets"])
    assert accepted > 1000 and rejected > 5000, (accepted, rejected)


def _valid_records(rng, row_bytes, k):
    M = int(rng.integers(0, 8))
    T = M + int(rng.integers(0, 5))
    xb = rng.integers(0, 256, size=(T, row_bytes), dtype=np.uint8)
    topk = rng.integers(-1, 16, size=(T, k)).astype(np.int64)
    w = rng.standard_normal((T, k)).astype(np.float32)
    tokens = np.sort(rng.choice(T, size=M, replace=False)).astype(np.int64) if T else np.zeros(0, np.int64)
    bitmaps = rng.integers(1, 16, size=M).astype(np.uint64)
    out = np.empty(M * c.record_size(row_bytes, k), np.uint8)
    c.pack_records(xb, topk, w, tokens, bitmaps, out)
    return out


def test_fuzz_fanout_counts_and_unpack_records():
    rng = np.random.default_rng(99)
    seen = {"counts_ok": 0, "counts_bad": 0, "unpack_ok": 0, "unpack_bad": 0}
    guard = 3
    for i in range(N_PER_FUNCTION):
        row_bytes, k = int(rng.integers(0, 20)), int(rng.integers(0, 4))
        rs = c.record_size(row_bytes, k)
        buf = _mutate(rng, _valid_records(rng, row_bytes, k), rs)
        # sometimes read with the wrong geometry
        rb2, k2 = (row_bytes, k) if rng.integers(0, 4) else (int(rng.integers(0, 20)), int(rng.integers(0, 4)))
        nl = int(rng.integers(1, 6))
        counts = None
        try:
            counts = c.fanout_counts(buf, rb2, k2, nl)
            seen["counts_ok"] += 1
            assert counts.shape == (nl,) and (counts >= 0).all()
        except c.PacketError:
            seen["counts_bad"] += 1

        lr = int(rng.integers(0, nl))
        C = int(rng.integers(0, 10))
        start = int(rng.integers(0, C + 1))
        ox = np.full((C + guard, rb2), 0xEE, np.uint8)
        os_ = np.full(C + guard, -9, np.int64)
        oi = np.full((C + guard, k2), -9, np.int64)
        ow = np.full((C + guard, k2), -9, np.float32)
        try:
            n = c.unpack_records(buf, rb2, k2, lr, 0, 8, ox[:C], os_[:C], oi[:C], ow[:C], start,
                                 num_local_ranks=nl)
            seen["unpack_ok"] += 1
            assert counts is not None and n == counts[lr] and start + n <= C
            assert (np.diff(os_[start:start + n]) > 0).all()
            assert ((oi[start:start + n] >= -1) & (oi[start:start + n] < 8)).all()
        except ValueError as e:                                # PacketError, or no room in the outputs
            seen["unpack_bad"] += 1
            assert isinstance(e, c.PacketError) or "outputs have room" in str(e)
        assert (ox[C:] == 0xEE).all() and (os_[C:] == -9).all() and (oi[C:] == -9).all() and (ow[C:] == -9).all()
    assert min(seen.values()) > 500, seen


def test_fuzz_land_node_packet():
    """land_node_packet (the small AllGather's receive path) on mutated node packets: it lands a packet
    only when it is exactly an expected one (then only at the sender's span) and otherwise returns -1
    without writing; nothing crashes, and nothing outside the spans is ever written."""
    rng = np.random.default_rng(99)
    P, L = 8, 4
    spans = np.zeros((P, 2), np.int64)
    spans[4:8] = (128, 64)                      # ranks 4..7 (node 1) land 64 bytes at 128
    staging0 = np.arange(256, dtype=np.uint8)
    src = rng.integers(0, 256, size=64, dtype=np.uint8)
    stage = np.zeros(512, np.uint8)
    stage[:64] = src
    outbox = np.zeros((1, 128), np.uint8)
    c.pack_node_packets(outbox, stage, 0, 64, 0x301, 7, 6, 128, ((0, 0b1111),))
    valid = outbox[0].copy()
    landed = refused = 0
    for i in range(N_PER_FUNCTION):
        buf = _mutate(rng, valid)
        if rng.integers(0, 2):
            _rechecksum(buf)                    # also reach the checks behind the header checksum
        staging = staging0.copy()
        sender = c.land_node_packet(buf, staging, 0x301, 7, L, spans)
        if sender < 0:
            refused += 1
            assert (staging == staging0).all(), f"input {i}: refused, but staging was written"
            continue
        landed += 1
        assert 4 <= sender < 8, f"input {i}: landed from rank {sender}, which is not an expected sender"
        assert (staging[:128] == staging0[:128]).all() and (staging[192:] == staging0[192:]).all(), i
        assert staging[128:192].tolist() == buf[64:128].tolist(), i
    assert refused > N_PER_FUNCTION // 2 and landed > 0, (landed, refused)
