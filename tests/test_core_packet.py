"""multiwrite._core packet header: CRC32C, build/parse round trips against a pure-Python encoder, and
every validation error."""
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from multiwrite import _core as c

FMT = "<IHHIIQQQQIIII"  # docs/core_api.md, "Packet header"
assert struct.calcsize(FMT) == 64


def _crc_table():
    table = []
    for i in range(256):
        x = i
        for _ in range(8):
            x = (x >> 1) ^ (0x82F63B78 if x & 1 else 0)
        table.append(x)
    return table


_TABLE = _crc_table()


def ref_crc32c(data: bytes, prev: int = 0) -> int:
    x = prev ^ 0xFFFFFFFF
    for b in data:
        x = (x >> 8) ^ _TABLE[(x ^ b) & 0xFF]
    return x ^ 0xFFFFFFFF


def ref_encode(*, window_id=1, seq=1, src_rank=0, dest_node=0, dest_bitmap=1, offset=0, payload_len=0,
               flags=0, payload_crc=0, magic=c.MAGIC, version=c.VERSION, reserved=0, header_crc=None,
               dest_offsets=()):
    head = struct.pack("<IHHIIQQQQII", magic, version, flags, window_id, src_rank, seq, offset, payload_len,
                       dest_bitmap, dest_node, payload_crc)
    crc = ref_crc32c(head) if header_crc is None else header_crc
    return head + struct.pack("<II", crc, reserved) + b"".join(struct.pack("<Q", o) for o in dest_offsets)


def u8(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype=np.uint8)


# ---------------------------------------------------------------- constants and CRC32C

def test_constants():
    assert c.HEADER_SIZE == 64
    assert c.MAGIC == 0x5452574D and struct.pack("<I", c.MAGIC) == b"MWRT"
    assert c.VERSION == 1
    assert (c.FLAG_CHECKSUM, c.FLAG_PER_DEST_OFFSETS, c.FLAG_NOTIFY) == (1, 2, 4)
    assert c.MAX_LOCAL_RANKS == 64
    assert issubclass(c.PacketError, ValueError)


def test_crc32c_known_vectors():
    assert c.crc32c(u8(b"123456789")) == 0xE3069283
    assert c.crc32c(u8(b"")) == 0
    assert c.crc32c(u8(bytes(32))) == 0x8A9136AA      # RFC 3720 B.4
    assert c.crc32c(u8(b"\xff" * 32)) == 0x62A8AB43


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_crc32c_matches_reference_and_chains(data, cut, prev):
    cut = min(cut, len(data))
    assert c.crc32c(u8(data), prev) == ref_crc32c(data, prev)
    assert c.crc32c(u8(data[cut:]), c.crc32c(u8(data[:cut]))) == ref_crc32c(data)
    # unaligned start
    buf = np.frombuffer(b"x" + data, dtype=np.uint8)[1:]
    assert c.crc32c(buf) == ref_crc32c(data)


def test_header_size():
    assert c.header_size() == 64
    assert c.header_size(3) == 88
    assert c.header_size(64) == 64 + 512
    with pytest.raises(ValueError, match=r"num_dest_offsets must be in \[0, 64\], got 65"):
        c.header_size(65)
    with pytest.raises(ValueError, match="got -1"):
        c.header_size(-1)


# ---------------------------------------------------------------- round trips

fields = st.fixed_dictionaries({
    "window_id": st.integers(0, 2**32 - 1),
    "seq": st.integers(0, 2**64 - 1),
    "src_rank": st.integers(0, 2**32 - 1),
    "dest_node": st.integers(0, 2**32 - 1),
    "dest_bitmap": st.integers(1, 2**64 - 1),
    "notify": st.booleans(),
})


@settings(max_examples=300, deadline=None)
@given(fields, st.binary(max_size=200), st.booleans(), st.booleans(), st.data())
def test_build_parse_round_trip(f, payload, checksum, per_dest, data):
    ndest = bin(f["dest_bitmap"]).count("1")
    locals_ = [i for i in range(64) if f["dest_bitmap"] >> i & 1]
    n = len(payload)
    if per_dest:
        offs = data.draw(st.lists(st.integers(0, 2**40), min_size=ndest, max_size=ndest))
        offset = 0
    else:
        offset = data.draw(st.integers(0, 2**40))
        offs = [offset] * ndest
    flags = c.FLAG_NOTIFY if f["notify"] else 0
    out = np.full(c.header_size(ndest if per_dest else 0) + 8, 0xEE, dtype=np.uint8)
    written = c.build_header(
        out, window_id=f["window_id"], seq=f["seq"], src_rank=f["src_rank"], dest_node=f["dest_node"],
        dest_bitmap=f["dest_bitmap"], offset=offset, payload_len=n, flags=flags,
        payload=u8(payload) if checksum else None,
        dest_offsets=np.array(offs, dtype=np.uint64) if per_dest else None)
    assert written == c.header_size(ndest if per_dest else 0)
    assert (out[written:] == 0xEE).all()
    flags |= (c.FLAG_CHECKSUM if checksum else 0) | (c.FLAG_PER_DEST_OFFSETS if per_dest else 0)
    expect = ref_encode(window_id=f["window_id"], seq=f["seq"], src_rank=f["src_rank"], dest_node=f["dest_node"],
                        dest_bitmap=f["dest_bitmap"], offset=offset, payload_len=n, flags=flags,
                        payload_crc=ref_crc32c(payload) if checksum else 0,
                        dest_offsets=offs if per_dest else ())
    assert out[:written].tobytes() == expect

    window = max(o + n for o in offs)
    info = c.parse_packet(u8(expect + payload), window_size=window, num_local_ranks=max(locals_) + 1,
                          expected_window_id=f["window_id"])
    for key in ("window_id", "seq", "src_rank", "dest_node", "dest_bitmap"):
        assert info[key] == f[key]
    assert info["flags"] == flags and info["offset"] == offset and info["payload_len"] == n
    assert info["payload_offset"] == written and info["dest_offsets"] == offs
    assert info["dest_local_ranks"] == locals_
    assert info["magic"] == c.MAGIC and info["version"] == 1
    assert info["payload_checksum"] == (ref_crc32c(payload) if checksum else 0)
    assert info["header_checksum"] == ref_crc32c(expect[:56])

    head = c.parse_header(u8(expect[:64]), window_size=None if per_dest else window,
                          num_local_ranks=max(locals_) + 1)
    assert head["payload_len"] == n and head["payload_offset"] == written
    assert head["offsets_len"] == (8 * ndest if per_dest else 0)
    assert head["dest_offsets"] == (None if per_dest else offs)

    if n and window > 0:
        with pytest.raises(c.PacketError, match="exceeds the window"):
            c.parse_packet(u8(expect + payload), window_size=window - 1)


def test_build_accepts_int64_offsets_and_numpy_ints():
    out = np.zeros(80, dtype=np.uint8)
    n = c.build_header(out, window_id=np.uint32(2), seq=np.int64(3), src_rank=1, dest_node=0, dest_bitmap=0b11,
                       offset=0, payload_len=4, dest_offsets=np.array([0, 4], dtype=np.int64))
    assert n == 80
    info = c.parse_packet(u8(out.tobytes() + b"abcd"), window_size=8)
    assert info["dest_offsets"] == [0, 4] and info["window_id"] == 2 and info["seq"] == 3


# ---------------------------------------------------------------- build_header errors

def _build(out=None, **kw):
    args = dict(window_id=1, seq=1, src_rank=0, dest_node=0, dest_bitmap=1, offset=0, payload_len=0)
    args.update(kw)
    return c.build_header(np.zeros(128, np.uint8) if out is None else out, **args)


@pytest.mark.parametrize("kw, msg", [
    ({"window_id": 2**32}, r"window_id = 4294967296 out of range \[0, 4294967295\]"),
    ({"src_rank": -1}, "src_rank must be >= 0, got -1"),
    ({"dest_node": 2**32}, "dest_node = 4294967296 out of range"),
    ({"seq": 2**64}, "seq = 18446744073709551616 does not fit in 64 bits"),
    ({"dest_bitmap": 0}, "dest_bitmap must name at least one local rank, got 0"),
    ({"flags": 8}, r"unknown flags 0x8 \(known: 0x7\)"),
    ({"flags": c.FLAG_CHECKSUM}, r"FLAG_CHECKSUM needs the payload"),
    ({"flags": c.FLAG_PER_DEST_OFFSETS}, "FLAG_PER_DEST_OFFSETS needs dest_offsets"),
    ({"payload_len": 3, "payload": np.zeros(4, np.uint8)}, "payload has 4 bytes, payload_len is 3"),
    ({"payload_len": 3, "payload": np.zeros(3, np.int8)}, "payload must have dtype uint8, got int8"),
    ({"dest_bitmap": 0b11, "dest_offsets": np.array([1], np.uint64)},
     r"dest_offsets has 1 entries, dest_bitmap 0x3 names 2 destinations"),
    ({"dest_offsets": np.array([-5], np.int64)}, r"dest_offsets\[0\] = -5 is negative"),
    ({"dest_offsets": np.array([5], np.int32)}, "dest_offsets must have dtype uint64 or int64, got int32"),
    ({"offset": 8, "dest_offsets": np.array([5], np.uint64)}, "offset must be 0 with dest_offsets, got 8"),
    ({"offset": 2**64 - 1, "payload_len": 2}, "overflows 64 bits"),
])
def test_build_header_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _build(**kw)


def test_build_header_out_errors():
    with pytest.raises(ValueError, match="out has 63 bytes, the header needs 64"):
        _build(np.zeros(63, np.uint8))
    with pytest.raises(ValueError, match="out has 64 bytes, the header \\+ destination offsets needs 80"):
        _build(np.zeros(64, np.uint8), dest_bitmap=0b101, dest_offsets=np.array([0, 8], np.uint64))
    ro = np.zeros(64, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        _build(ro)
    with pytest.raises(ValueError, match="out must have dtype uint8, got float32"):
        _build(np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        _build(np.zeros(256, np.uint8)[::2])


# ---------------------------------------------------------------- parse errors

def _packet(payload=b"", **kw):
    return u8(ref_encode(payload_len=len(payload), **kw) + payload)


@pytest.mark.parametrize("buf, kw, msg", [
    (u8(b"\0" * 10), {}, "packet of 10 bytes is shorter than the 64-byte header"),
    (_packet(magic=0x12345678), {}, r"bad magic 0x12345678 \(expected 0x5452574D, bytes 'MWRT'\)"),
    (_packet(version=2), {}, r"unsupported packet version 2 \(this build reads version 1\)"),
    (_packet(header_crc=0xDEADBEEF), {}, "header checksum mismatch: stored 0xDEADBEEF"),
    (_packet(flags=0x10), {}, r"unknown flags 0x10 \(known: 0x7\)"),
    (_packet(reserved=1), {}, "reserved header field is 0x1, must be 0"),
    (_packet(window_id=5), {"expected_window_id": 6}, "packet for window 5, expected window 6"),
    (_packet(dest_bitmap=0), {}, "destination bitmap is empty"),
    (_packet(dest_bitmap=0b10001), {"num_local_ranks": 4},
     r"destination bitmap 0x11 names local rank 4 but the node has 4 local ranks"),
    (_packet(flags=2, offset=8, dest_offsets=[0]), {}, "common offset 8 must be 0 with FLAG_PER_DEST_OFFSETS"),
    (_packet(payload_crc=7), {}, "payload checksum field 0x7 must be 0 without FLAG_CHECKSUM"),
    (u8(ref_encode(payload_len=100) + bytes(50)), {}, "payload_len 100 exceeds buffer: 64 header \\+ 50 bytes"),
    (u8(ref_encode(payload_len=10) + bytes(50)), {},
     r"payload_len 10 is shorter than buffer: 64 header \+ 50 bytes \(40 trailing bytes\)"),
    (u8(ref_encode(flags=2, dest_bitmap=0b11, payload_len=100, dest_offsets=[0, 0]) + bytes(50)), {},
     r"payload_len 100 exceeds buffer: 64 header \+ 16 offsets \+ 50 bytes"),
    (u8(ref_encode(flags=2, dest_bitmap=0b111, dest_offsets=[0])), {},
     r"packet of 72 bytes is shorter than the header \+ 3 destination offsets \(88 bytes\)"),
    (_packet(b"abcd", offset=10), {"window_size": 13},
     r"destination 0 \(local rank 0\): offset 10 \+ payload_len 4 exceeds the window of 13 bytes"),
    (_packet(b"abcd", flags=2, dest_bitmap=0b1010, dest_offsets=[0, 2**64 - 2]), {"window_size": 2**64 - 1},
     r"destination 1 \(local rank 3\): offset 18446744073709551614 \+ payload_len 4 exceeds the window"),
    (_packet(b"abcd", flags=2, dest_bitmap=1, dest_offsets=[2**64 - 2]), {},
     "offset 18446744073709551614 \\+ payload_len 4 overflows 64 bits"),
    (_packet(b"abcd", flags=1, payload_crc=ref_crc32c(b"abce")), {}, "payload checksum mismatch"),
])
def test_parse_packet_errors(buf, kw, msg):
    with pytest.raises(c.PacketError, match=msg):
        c.parse_packet(buf, **kw)


def test_parse_argument_errors():
    good = _packet()
    assert c.parse_packet(good, window_size=0)["payload_len"] == 0
    with pytest.raises(ValueError, match=r"num_local_ranks must be in \[1, 64\], got 65"):
        c.parse_packet(good, num_local_ranks=65)
    with pytest.raises(ValueError, match="window_size must be >= 0"):
        c.parse_packet(good, window_size=-1)
    with pytest.raises(ValueError, match="buf must have dtype uint8, got int16"):
        c.parse_packet(np.zeros(64, np.int16))
    with pytest.raises(ValueError, match="buf must be C-contiguous"):
        c.parse_packet(np.zeros(256, np.uint8)[::2])


def test_parse_header_checks_header_only():
    # the payload and offsets are separate messages: a bare header is enough
    head = u8(ref_encode(flags=2, dest_bitmap=0b11, payload_len=1000, dest_offsets=[0, 0])[:64])
    info = c.parse_header(head, window_size=10, num_local_ranks=2)
    assert info["dest_offsets"] is None and info["offsets_len"] == 16 and info["payload_offset"] == 80
    with pytest.raises(c.PacketError, match="exceeds the window of 10 bytes"):
        c.parse_header(u8(ref_encode(payload_len=11)), window_size=10)
    with pytest.raises(c.PacketError, match="packet of 63 bytes is shorter than the 64-byte header"):
        c.parse_header(u8(ref_encode()[:63]))
    with pytest.raises(c.PacketError, match="bad magic"):
        c.parse_header(u8(ref_encode(magic=0)))


def _signature_slots(local_size, differ=False, parity=1):
    """(ctrl, parity, signature bytes, local size): a node control segment whose round signature slots
    of ``parity`` hold equal signatures (or, with ``differ``, local rank 1's differs)."""
    NC = c.NODE_CONTROL
    raw = np.zeros(NC["size"] + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    ctrl = raw[start:start + NC["size"]]
    bank = NC["round_signature"] + NC["slot"] * c.MAX_LOCAL_RANKS * parity
    for i in range(local_size):
        ctrl[bank + 64 * i:bank + 64 * i + 48] = np.arange(48, dtype=np.uint8)
    if differ:
        ctrl[bank + 64 + 40] = 99                # local rank 1, word 5
    return ctrl, parity, 48, local_size


def test_pack_node_packets_headers_and_payload():
    """pack_node_packets: one row per destination, a header a reference decoder reads back, and the
    staging bytes as payload; when the local signatures differ, header-only packets (payload 0)."""
    staging = np.arange(256, dtype=np.uint8)
    outbox = np.zeros((2, 64 + 32), np.uint8)
    n = c.pack_node_packets(outbox, staging, 64, 32, 0x301, 9, 5, 64, ((1, 0b1111), (2, 0b11)), _signature_slots(4))
    assert n == 96
    for row, (node, bitmap) in zip(outbox, ((1, 0b1111), (2, 0b11))):
        info = c.parse_packet(row, window_size=256, num_local_ranks=4)
        assert (info["window_id"], info["seq"], info["src_rank"], info["dest_node"], info["dest_bitmap"],
                info["offset"], info["payload_len"]) == (0x301, 9, 5, node, bitmap, 64, 32)
        assert row[64:].tolist() == list(range(64, 96))
    outbox[:] = 0
    n = c.pack_node_packets(outbox, staging, 64, 32, 0x301, 9, 5, 64, ((1, 0b1111),), _signature_slots(4, differ=True))
    assert n == 64 and c.parse_packet(outbox[0, :64])["payload_len"] == 0 and outbox[1].sum() == 0
    assert c.parse_packet(outbox[0, :64])["offset"] == 0


@pytest.mark.parametrize("args, text", [
    ((np.zeros((1, 80), np.uint8), 0, 32), "cannot hold"),           # row too short for the payload
    ((np.zeros((1, 96), np.uint8), 240, 32), "exceed"),              # payload past the staging area
    ((np.zeros(96, np.uint8), 0, 32), "2-D"),
])
def test_pack_node_packets_refusals(args, text):
    outbox, offset, length = args
    with pytest.raises(ValueError, match=text):
        c.pack_node_packets(outbox, np.zeros(256, np.uint8), offset, length, 1, 1, 0, 0, ((1, 1),))
    with pytest.raises(ValueError, match="rows for 2"):
        c.pack_node_packets(np.zeros((1, 96), np.uint8), np.zeros(256, np.uint8), 0, 32, 1, 1, 0, 0, ((1, 1), (2, 1)))
    with pytest.raises(ValueError, match="dest_bitmap"):
        c.pack_node_packets(np.zeros((1, 96), np.uint8), np.zeros(256, np.uint8), 0, 32, 1, 1, 0, 0, ((1, 0),))


def test_land_node_packet_lands_only_what_is_expected():
    """land_node_packet: a valid packet from an expected sender lands at its span and returns the
    sender; anything else (wrong window, seq, sender, length, offset, corrupt header, payload-less,
    truncated) returns -1 and writes nothing."""
    spans = np.zeros((8, 2), np.int64)
    spans[4:8] = (128, 64)                        # ranks 4..7 send node 1's 64 bytes, landing at 128
    staging = np.arange(256, dtype=np.uint8)
    src = np.arange(64, dtype=np.uint8) + 100
    outbox = np.zeros((1, 64 + 64), np.uint8)
    signatures = _signature_slots(4)
    box = np.zeros(64 + 64 + 16, np.uint8)         # any-source inboxes may be longer than the packet

    def packet(**kw):
        a = dict(staging_offset=0, payload_len=64, window_id=0x301, seq=7, src_rank=6, offset=128)
        a.update(kw)
        stage = np.zeros(512, np.uint8)
        stage[a["staging_offset"]:a["staging_offset"] + 64] = src
        c.pack_node_packets(outbox, stage, a["staging_offset"], a["payload_len"], a["window_id"], a["seq"],
                            a["src_rank"], a["offset"], ((0, 0b1111),), signatures)
        box[:] = 0
        box[:64 + a["payload_len"]] = outbox[0, :64 + a["payload_len"]]
        return box

    before = staging.copy()
    for kw in (dict(window_id=0x302), dict(seq=8), dict(src_rank=2), dict(src_rank=9), dict(offset=64),
               dict(payload_len=32), dict(payload_len=0, offset=0)):
        assert c.land_node_packet(packet(**kw), staging, 0x301, 7, 4, spans) == -1, kw
        assert (staging == before).all()
    bad = packet().copy()
    bad[20] ^= 1                                   # corrupt header: checksum mismatch
    assert c.land_node_packet(bad, staging, 0x301, 7, 4, spans) == -1
    assert c.land_node_packet(packet()[:100], staging, 0x301, 7, 4, spans) == -1    # truncated payload
    assert (staging == before).all()
    assert c.land_node_packet(packet(), staging, 0x301, 7, 4, spans) == 6
    assert staging[128:192].tolist() == src.tolist() and (staging[:128] == before[:128]).all()
    with pytest.raises(ValueError, match="spans"):
        c.land_node_packet(packet(), staging, 0x301, 7, 4, np.zeros((8, 3), np.int64))
    with pytest.raises(ValueError, match="num_local_ranks"):
        c.land_node_packet(packet(), staging, 0x301, 7, 0, spans)
