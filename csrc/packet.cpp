// Packet header: build and validate (docs/core_api.md, "Packet header").
#include <vector>

#include "arrays.hpp"
#include "crc32c.hpp"
#include "sync.hpp"

namespace mw {
namespace {

constexpr uint32_t MAGIC = 0x5452574Du;  // bytes "MWRT"
constexpr uint16_t VERSION = 1;
constexpr uint64_t HEADER_SIZE = 64;
constexpr uint16_t FLAG_CHECKSUM = 1, FLAG_PER_DEST_OFFSETS = 2, FLAG_NOTIFY = 4;
constexpr uint16_t KNOWN_FLAGS = FLAG_CHECKSUM | FLAG_PER_DEST_OFFSETS | FLAG_NOTIFY;
constexpr size_t GIL_FREE_BYTES = 1 << 16;  // checksum larger payloads with the GIL released

struct Header {
    uint32_t magic = MAGIC;
    uint16_t version = VERSION;
    uint16_t flags = 0;
    uint32_t window_id = 0;
    uint32_t src_rank = 0;
    uint64_t seq = 0;
    uint64_t offset = 0;
    uint64_t payload_len = 0;
    uint64_t dest_bitmap = 0;
    uint32_t dest_node = 0;
    uint32_t payload_crc = 0;
    uint32_t header_crc = 0;
    uint32_t reserved = 0;
};

void encode(Header& h, uint8_t* p) {
    store<uint32_t>(p + 0, h.magic);
    store<uint16_t>(p + 4, h.version);
    store<uint16_t>(p + 6, h.flags);
    store<uint32_t>(p + 8, h.window_id);
    store<uint32_t>(p + 12, h.src_rank);
    store<uint64_t>(p + 16, h.seq);
    store<uint64_t>(p + 24, h.offset);
    store<uint64_t>(p + 32, h.payload_len);
    store<uint64_t>(p + 40, h.dest_bitmap);
    store<uint32_t>(p + 48, h.dest_node);
    store<uint32_t>(p + 52, h.payload_crc);
    h.header_crc = crc32c(p, 56);
    store<uint32_t>(p + 56, h.header_crc);
    store<uint32_t>(p + 60, h.reserved);
}

Header decode(const uint8_t* p) {
    Header h;
    h.magic = load<uint32_t>(p + 0);
    h.version = load<uint16_t>(p + 4);
    h.flags = load<uint16_t>(p + 6);
    h.window_id = load<uint32_t>(p + 8);
    h.src_rank = load<uint32_t>(p + 12);
    h.seq = load<uint64_t>(p + 16);
    h.offset = load<uint64_t>(p + 24);
    h.payload_len = load<uint64_t>(p + 32);
    h.dest_bitmap = load<uint64_t>(p + 40);
    h.dest_node = load<uint32_t>(p + 48);
    h.payload_crc = load<uint32_t>(p + 52);
    h.header_crc = load<uint32_t>(p + 56);
    h.reserved = load<uint32_t>(p + 60);
    return h;
}

struct Limits {
    bool has_window = false;
    uint64_t window_size = 0;
    int num_local_ranks = 0;  // 0: no bound beyond the 64-bit bitmap
    bool has_expected = false;
    uint32_t expected_window_id = 0;
};

// The 64 header bytes at p (caller guarantees n >= 64 is checked here).
Header check_header(const uint8_t* p, uint64_t n, const Limits& lim) {
    if (n < HEADER_SIZE) packet_error("packet of ", n, " bytes is shorter than the 64-byte header");
    Header h = decode(p);
    if (h.magic != MAGIC) packet_error("bad magic ", hex(h.magic), " (expected ", hex(MAGIC), ", bytes 'MWRT')");
    if (h.version != VERSION)
        packet_error("unsupported packet version ", h.version, " (this build reads version ", VERSION, ")");
    uint32_t crc = crc32c(p, 56);
    if (crc != h.header_crc)
        packet_error("header checksum mismatch: stored ", hex(h.header_crc), ", computed ", hex(crc),
                     " (corrupted header)");
    if (h.flags & ~KNOWN_FLAGS) packet_error("unknown flags ", hex(h.flags), " (known: ", hex(KNOWN_FLAGS), ")");
    if (h.reserved != 0) packet_error("reserved header field is ", hex(h.reserved), ", must be 0");
    if (lim.has_expected && h.window_id != lim.expected_window_id)
        packet_error("packet for window ", h.window_id, ", expected window ", lim.expected_window_id);
    if (h.dest_bitmap == 0) packet_error("destination bitmap is empty");
    if (lim.num_local_ranks > 0 && beyond(h.dest_bitmap, lim.num_local_ranks))
        packet_error("destination bitmap ", hex(h.dest_bitmap), " names local rank ", top_bit(h.dest_bitmap),
                     " but the node has ", lim.num_local_ranks, " local ranks");
    if ((h.flags & FLAG_PER_DEST_OFFSETS) && h.offset != 0)
        packet_error("common offset ", h.offset, " must be 0 with FLAG_PER_DEST_OFFSETS");
    if (!(h.flags & FLAG_CHECKSUM) && h.payload_crc != 0)
        packet_error("payload checksum field ", hex(h.payload_crc), " must be 0 without FLAG_CHECKSUM");
    return h;
}

void check_in_window(uint64_t off, uint64_t len, uint64_t window, int dest_index, int local_rank) {
    uint64_t end;
    if (!add_ok(off, len, &end) || end > window)
        packet_error("destination ", dest_index, " (local rank ", local_rank, "): offset ", off,
                     " + payload_len ", len, " exceeds the window of ", window, " bytes");
}

std::vector<int> bits_of(uint64_t bm) {
    std::vector<int> v;
    for (int i = 0; i < 64; ++i)
        if (bm >> i & 1) v.push_back(i);
    return v;
}

Limits make_limits(py::object window_size, py::object num_local_ranks, py::object expected_window_id) {
    Limits lim;
    if (!window_size.is_none()) {
        lim.has_window = true;
        lim.window_size = to_u64(window_size, "window_size");
    }
    if (!num_local_ranks.is_none())
        lim.num_local_ranks = local_ranks_arg(to_i64(num_local_ranks, "num_local_ranks"));
    if (!expected_window_id.is_none()) {
        lim.has_expected = true;
        lim.expected_window_id = static_cast<uint32_t>(to_u64(expected_window_id, "expected_window_id", 0xFFFFFFFFu));
    }
    return lim;
}

py::dict header_dict(const Header& h, uint64_t payload_offset) {
    py::dict d;
    d["magic"] = h.magic;
    d["version"] = h.version;
    d["flags"] = h.flags;
    d["window_id"] = h.window_id;
    d["src_rank"] = h.src_rank;
    d["seq"] = h.seq;
    d["offset"] = h.offset;
    d["payload_len"] = h.payload_len;
    d["dest_bitmap"] = h.dest_bitmap;
    d["dest_node"] = h.dest_node;
    d["payload_checksum"] = h.payload_crc;
    d["header_checksum"] = h.header_crc;
    d["payload_offset"] = payload_offset;
    py::list locals;
    for (int b : bits_of(h.dest_bitmap)) locals.append(b);
    d["dest_local_ranks"] = locals;
    return d;
}

const uint8_t* byte_input(const py::array& buf, const char* name) {
    require(buf, name, DT::U8, -1);
    return cdata<uint8_t>(buf);
}

uint32_t checksum(const uint8_t* p, uint64_t n, uint32_t prev = 0) {
    if (n >= GIL_FREE_BYTES) {
        py::gil_scoped_release nogil;
        return crc32c(p, n, prev);
    }
    return crc32c(p, n, prev);
}

// ---- Python entry points ----

int64_t py_header_size(int64_t num_dest_offsets) {
    if (num_dest_offsets < 0 || num_dest_offsets > MAX_LOCAL_RANKS)
        value_error("num_dest_offsets must be in [0, 64], got ", num_dest_offsets);
    return static_cast<int64_t>(HEADER_SIZE) + 8 * num_dest_offsets;
}

int64_t py_build_header(py::array out, py::object window_id, py::object seq, py::object src_rank,
                        py::object dest_node, py::object dest_bitmap, py::object offset, py::object payload_len,
                        py::object flags, py::object payload, py::object dest_offsets) {
    Header h;
    h.window_id = static_cast<uint32_t>(to_u64(window_id, "window_id", 0xFFFFFFFFu));
    h.seq = to_u64(seq, "seq");
    h.src_rank = static_cast<uint32_t>(to_u64(src_rank, "src_rank", 0xFFFFFFFFu));
    h.dest_node = static_cast<uint32_t>(to_u64(dest_node, "dest_node", 0xFFFFFFFFu));
    h.dest_bitmap = to_u64(dest_bitmap, "dest_bitmap");
    h.offset = to_u64(offset, "offset");
    h.payload_len = to_u64(payload_len, "payload_len");
    h.flags = static_cast<uint16_t>(to_u64(flags, "flags", 0xFFFF));
    if (h.flags & ~KNOWN_FLAGS) value_error("unknown flags ", hex(h.flags), " (known: ", hex(KNOWN_FLAGS), ")");
    if (h.dest_bitmap == 0) value_error("dest_bitmap must name at least one local rank, got 0");
    const int ndest = popcount64(h.dest_bitmap);

    // Destination offsets.
    std::vector<uint64_t> offs;
    if (!dest_offsets.is_none()) {
        py::array a = py::array::ensure(dest_offsets);
        if (!a) value_error("dest_offsets must be an array of uint64 or int64");
        DT d = require_dtype2(a, "dest_offsets", DT::U64, DT::I64);
        require_ndim(a, "dest_offsets", 1);
        require_contig(a, "dest_offsets");
        if (a.shape(0) != ndest)
            value_error("dest_offsets has ", a.shape(0), " entries, dest_bitmap ", hex(h.dest_bitmap), " names ",
                        ndest, " destinations");
        for (int i = 0; i < ndest; ++i) {
            int64_t s = d == DT::I64 ? cdata<int64_t>(a)[i] : 0;
            if (d == DT::I64 && s < 0) value_error("dest_offsets[", i, "] = ", s, " is negative");
            offs.push_back(d == DT::I64 ? static_cast<uint64_t>(s) : cdata<uint64_t>(a)[i]);
        }
        if (h.offset != 0) value_error("offset must be 0 with dest_offsets, got ", h.offset);
        h.flags |= FLAG_PER_DEST_OFFSETS;
    } else if (h.flags & FLAG_PER_DEST_OFFSETS) {
        value_error("FLAG_PER_DEST_OFFSETS needs dest_offsets");
    }
    if (offs.empty()) offs.assign(static_cast<size_t>(ndest), h.offset);
    for (int i = 0; i < ndest; ++i) {
        uint64_t end;
        if (!add_ok(offs[i], h.payload_len, &end))
            value_error("destination ", i, ": offset ", offs[i], " + payload_len ", h.payload_len,
                        " overflows 64 bits");
    }

    // Payload checksum.
    if (!payload.is_none()) {
        py::array a = py::array::ensure(payload);
        if (!a) value_error("payload must be a uint8 array");
        require(a, "payload", DT::U8, -1);
        if (nbytes(a) != h.payload_len)
            value_error("payload has ", nbytes(a), " bytes, payload_len is ", h.payload_len);
        h.payload_crc = checksum(cdata<uint8_t>(a), nbytes(a));
        h.flags |= FLAG_CHECKSUM;
    } else if (h.flags & FLAG_CHECKSUM) {
        value_error("FLAG_CHECKSUM needs the payload (payload=...)");
    }

    const bool per_dest = h.flags & FLAG_PER_DEST_OFFSETS;
    const uint64_t need = HEADER_SIZE + (per_dest ? 8 * static_cast<uint64_t>(ndest) : 0);
    require(out, "out", DT::U8, -1, true);
    if (nbytes(out) < need)
        value_error("out has ", nbytes(out), " bytes, the header", per_dest ? " + destination offsets" : "",
                    " needs ", need);
    uint8_t* p = mdata<uint8_t>(out);
    encode(h, p);
    if (per_dest)
        for (int i = 0; i < ndest; ++i) store<uint64_t>(p + HEADER_SIZE + 8 * i, offs[i]);
    return static_cast<int64_t>(need);
}

py::dict py_parse_header(py::array buf, py::object window_size, py::object num_local_ranks,
                         py::object expected_window_id) {
    const uint8_t* p = byte_input(buf, "buf");
    Limits lim = make_limits(window_size, num_local_ranks, expected_window_id);
    Header h = check_header(p, nbytes(buf), lim);
    const bool per_dest = h.flags & FLAG_PER_DEST_OFFSETS;
    const int ndest = popcount64(h.dest_bitmap);
    std::vector<int> locals = bits_of(h.dest_bitmap);
    if (lim.has_window && !per_dest)
        for (int i = 0; i < ndest; ++i) check_in_window(h.offset, h.payload_len, lim.window_size, i, locals[i]);
    py::dict d = header_dict(h, HEADER_SIZE + (per_dest ? 8 * static_cast<uint64_t>(ndest) : 0));
    d["offsets_len"] = per_dest ? 8 * ndest : 0;
    if (per_dest) {
        d["dest_offsets"] = py::none();
    } else {
        py::list l;
        for (int i = 0; i < ndest; ++i) l.append(h.offset);
        d["dest_offsets"] = l;
    }
    return d;
}

py::dict py_parse_packet(py::array buf, py::object window_size, py::object num_local_ranks,
                         py::object expected_window_id) {
    const uint8_t* p = byte_input(buf, "buf");
    const uint64_t n = nbytes(buf);
    Limits lim = make_limits(window_size, num_local_ranks, expected_window_id);
    Header h = check_header(p, n, lim);
    const bool per_dest = h.flags & FLAG_PER_DEST_OFFSETS;
    const int ndest = popcount64(h.dest_bitmap);
    std::vector<int> locals = bits_of(h.dest_bitmap);
    const uint64_t offs_len = per_dest ? 8 * static_cast<uint64_t>(ndest) : 0;
    const uint64_t payload_off = HEADER_SIZE + offs_len;
    if (n < payload_off)
        packet_error("packet of ", n, " bytes is shorter than the header + ", ndest,
                     " destination offsets (", payload_off, " bytes)");
    const uint64_t avail = n - payload_off;
    const std::string parts = per_dest ? fmt(HEADER_SIZE, " header + ", offs_len, " offsets + ", avail, " bytes")
                                       : fmt(HEADER_SIZE, " header + ", avail, " bytes");
    if (h.payload_len > avail) packet_error("payload_len ", h.payload_len, " exceeds buffer: ", parts);
    if (h.payload_len < avail)
        packet_error("payload_len ", h.payload_len, " is shorter than buffer: ", parts, " (",
                     avail - h.payload_len, " trailing bytes)");
    std::vector<uint64_t> offs(static_cast<size_t>(ndest), h.offset);
    if (per_dest)
        for (int i = 0; i < ndest; ++i) offs[i] = load<uint64_t>(p + HEADER_SIZE + 8 * i);
    for (int i = 0; i < ndest; ++i) {
        if (lim.has_window) {
            check_in_window(offs[i], h.payload_len, lim.window_size, i, locals[i]);
        } else {
            uint64_t end;
            if (!add_ok(offs[i], h.payload_len, &end))
                packet_error("destination ", i, ": offset ", offs[i], " + payload_len ", h.payload_len,
                             " overflows 64 bits");
        }
    }
    if (h.flags & FLAG_CHECKSUM) {
        uint32_t crc = checksum(p + payload_off, h.payload_len);
        if (crc != h.payload_crc)
            packet_error("payload checksum mismatch: header says ", hex(h.payload_crc), ", payload has ",
                         hex(crc), " (corrupted payload)");
    }
    py::dict d = header_dict(h, payload_off);
    py::list l;
    for (uint64_t o : offs) l.append(o);
    d["dest_offsets"] = l;
    return d;
}

uint32_t py_crc32c(py::array data, uint32_t prev) {
    const uint8_t* p = byte_input(data, "data");
    return checksum(p, nbytes(data), prev);
}

// ---- node packets of the small AllGather (multiwrite/allgather.py, _all_gather_small) ----------
// The sending rank and the receiving leader are on the operation's critical path; on a host with
// more ranks than cores each Python step of theirs costs tens of microseconds when caches are cold,
// so each side is one call.

int64_t py_pack_node_packets(py::array outbox, py::array staging, py::handle staging_offset, py::handle payload_len,
                             py::handle window_id, py::handle seq, py::handle src_rank, py::handle offset,
                             py::sequence dests, py::object signatures) {
    require(outbox, "outbox", DT::U8, 2, true);
    const uint64_t len = to_u64(payload_len, "payload_len");
    const size_t k = py::len(dests);
    if (static_cast<size_t>(outbox.shape(0)) < k)
        value_error("outbox has ", outbox.shape(0), " rows for ", k, " destinations");
    if (static_cast<uint64_t>(outbox.shape(1)) < HEADER_SIZE + len)
        value_error("outbox rows of ", outbox.shape(1), " bytes cannot hold a packet of ", HEADER_SIZE + len);
    const uint8_t* payload = byte_span(staging, "staging", to_u64(staging_offset, "staging_offset"), len, false);
    Header h;
    h.window_id = static_cast<uint32_t>(to_u64(window_id, "window_id", 0xFFFFFFFFu));
    h.seq = to_u64(seq, "seq");
    h.src_rank = static_cast<uint32_t>(to_u64(src_rank, "src_rank", 0xFFFFFFFFu));
    h.offset = to_u64(offset, "offset");
    h.payload_len = len;
    uint64_t end;
    if (!add_ok(h.offset, len, &end)) value_error("offset ", h.offset, " + payload_len ", len, " overflows 64 bits");
    std::vector<std::pair<uint32_t, uint64_t>> to(k);
    for (size_t i = 0; i < k; ++i) {
        py::sequence d = dests[i].cast<py::sequence>();
        if (py::len(d) != 2) value_error("dests[", i, "] must be (dest_node, dest_bitmap)");
        to[i] = {static_cast<uint32_t>(to_u64(d[0], "dest_node", 0xFFFFFFFFu)), to_u64(d[1], "dest_bitmap")};
        if (to[i].second == 0) value_error("dests[", i, "]: dest_bitmap must name at least one local rank, got 0");
    }
    if (!signatures.is_none()) {
        py::tuple a = signatures.cast<py::tuple>();
        if (a.size() != 4) value_error("signatures must be (ctrl, parity, signature_bytes, local_size)");
        py::array ctrl = py::array::ensure(a[0]);
        if (!ctrl) value_error("signatures: ctrl must be a NumPy array");
        const uint64_t sig_bytes = to_u64(a[2], "signature_bytes", 64), L = to_u64(a[3], "local_size", 64);
        const uint8_t* sigs = round_signatures(ctrl, parity_arg(a[1]), sig_bytes, L);
        if (!signatures_agree(sigs, sig_bytes, L)) h.payload_len = h.offset = 0;   // a payload-less packet
    }
    const uint64_t row = static_cast<uint64_t>(outbox.strides(0));
    uint8_t* p = mdata<uint8_t>(outbox);
    for (size_t i = 0; i < k; ++i, p += row) {
        h.dest_node = to[i].first;
        h.dest_bitmap = to[i].second;
        encode(h, p);
        if (h.payload_len) std::memcpy(p + HEADER_SIZE, payload, h.payload_len);
    }
    return static_cast<int64_t>(HEADER_SIZE + h.payload_len);
}

int64_t py_land_node_packet(py::array packet, py::array staging, py::handle window_id, py::handle seq,
                            py::handle num_local_ranks, py::array spans) {
    const uint8_t* p = byte_input(packet, "packet");
    const uint64_t n = nbytes(packet);
    require(spans, "spans", DT::I64, 2);
    if (spans.shape(1) != 2) value_error("spans must have shape (world_size, 2), got ", shape_str(spans));
    Limits lim;
    lim.num_local_ranks = local_ranks_arg(to_i64(num_local_ranks, "num_local_ranks"));
    const uint32_t wid = static_cast<uint32_t>(to_u64(window_id, "window_id", 0xFFFFFFFFu));
    const uint64_t s = to_u64(seq, "seq");
    Header h;
    try {
        h = check_header(p, n, lim);
    } catch (const PacketError&) {
        return -1;
    }
    if (h.window_id != wid || h.seq != s || (h.flags & (FLAG_PER_DEST_OFFSETS | FLAG_CHECKSUM)) ||
        h.src_rank >= static_cast<uint64_t>(spans.shape(0)))
        return -1;
    const int64_t* span = cdata<int64_t>(spans) + 2 * h.src_rank;
    if (span[1] <= 0 || h.payload_len != static_cast<uint64_t>(span[1]) || h.offset != static_cast<uint64_t>(span[0]) ||
        h.payload_len > n - HEADER_SIZE)
        return -1;
    std::memcpy(byte_span(staging, "staging", h.offset, h.payload_len, true), p + HEADER_SIZE, h.payload_len);
    return h.src_rank;
}

}  // namespace

void register_packet(py::module_& m) {
    m.attr("HEADER_SIZE") = HEADER_SIZE;
    m.attr("MAGIC") = MAGIC;
    m.attr("VERSION") = VERSION;
    m.attr("FLAG_CHECKSUM") = FLAG_CHECKSUM;
    m.attr("FLAG_PER_DEST_OFFSETS") = FLAG_PER_DEST_OFFSETS;
    m.attr("FLAG_NOTIFY") = FLAG_NOTIFY;
    m.attr("MAX_LOCAL_RANKS") = MAX_LOCAL_RANKS;

    m.def("header_size", &py_header_size, py::arg("num_dest_offsets") = 0,
          R"(header_size(num_dest_offsets=0) -> int

Bytes of a packet header followed by ``num_dest_offsets`` u64 destination offsets:
``64 + 8 * num_dest_offsets``. ``num_dest_offsets`` in [0, 64].)");

    m.def("build_header", &py_build_header, py::arg("out"), py::kw_only(), py::arg("window_id"), py::arg("seq"),
          py::arg("src_rank"), py::arg("dest_node"), py::arg("dest_bitmap"), py::arg("offset"),
          py::arg("payload_len"), py::arg("flags") = 0, py::arg("payload") = py::none(),
          py::arg("dest_offsets") = py::none(),
          R"(build_header(out, *, window_id, seq, src_rank, dest_node, dest_bitmap, offset, payload_len, flags=0, payload=None, dest_offsets=None) -> int

Write a packet header (docs/core_api.md) into ``out`` and return the bytes written.

out:          uint8, C-contiguous, writeable, at least ``header_size(n)`` bytes where n is 0, or
              popcount(dest_bitmap) when destination offsets are given (they follow the header).
window_id, src_rank, dest_node: u32.  seq, offset, payload_len: u64.
dest_bitmap:  u64, nonzero: bit i = local rank i of the destination node.
flags:        FLAG_NOTIFY and/or FLAG_CHECKSUM / FLAG_PER_DEST_OFFSETS (the last two are also set
              automatically by ``payload`` / ``dest_offsets``).
payload:      uint8 array of exactly payload_len bytes: its CRC32C is stored and FLAG_CHECKSUM set.
dest_offsets: uint64 or int64 [popcount(dest_bitmap)], one window offset per destination in
              increasing bit order; sets FLAG_PER_DEST_OFFSETS and requires offset == 0.
Raises ValueError for out-of-range fields, inconsistent flags or a too-small ``out``.)");

    m.def("parse_packet", &py_parse_packet, py::arg("buf"), py::kw_only(), py::arg("window_size") = py::none(),
          py::arg("num_local_ranks") = py::none(), py::arg("expected_window_id") = py::none(),
          R"(parse_packet(buf, *, window_size=None, num_local_ranks=None, expected_window_id=None) -> dict

Validate a whole packet ``buf`` (uint8, C-contiguous: header [+ offsets] + payload, exactly) and
return its fields: magic, version, flags, window_id, src_rank, seq, offset, payload_len, dest_bitmap,
dest_node, payload_checksum, header_checksum, payload_offset (byte offset of the payload in buf),
dest_local_ranks (list of set bits) and dest_offsets (list, one window offset per destination).

Checks magic, version, header checksum, unknown flags, reserved == 0, expected_window_id, a nonzero
bitmap with only bits < num_local_ranks (1..64), a zero common offset with per-destination offsets,
header + offsets + payload_len == len(buf), every destination's [offset, offset + payload_len)
inside window_size (overflow-safe), and the payload CRC32C with FLAG_CHECKSUM (the field must be 0
without it). Raises PacketError (a ValueError) naming the first problem.)");

    m.def("parse_header", &py_parse_header, py::arg("buf"), py::kw_only(), py::arg("window_size") = py::none(),
          py::arg("num_local_ranks") = py::none(), py::arg("expected_window_id") = py::none(),
          R"(parse_header(buf, *, window_size=None, num_local_ranks=None, expected_window_id=None) -> dict

Validate only the 64-byte header at the start of ``buf`` (uint8, >= 64 bytes; later bytes are not
read), for transports that carry the header, the offsets and the payload as separate messages.
Same checks and keys as parse_packet except those that need the payload; ``offsets_len`` is the
number of offset bytes that follow the header (8 * popcount with FLAG_PER_DEST_OFFSETS, else 0),
``payload_offset`` is 64 + offsets_len, and ``dest_offsets`` is None with FLAG_PER_DEST_OFFSETS
(the offsets are not in the header; window_size is then not checked) or the common offset
repeated per destination.)");

    m.def("pack_node_packets", &py_pack_node_packets, py::arg("outbox"), py::arg("staging"),
          py::arg("staging_offset"), py::arg("payload_len"), py::arg("window_id"), py::arg("seq"), py::arg("src_rank"),
          py::arg("offset"), py::arg("dests"), py::arg("signatures") = py::none(),
          R"(pack_node_packets(outbox, staging, staging_offset, payload_len, window_id, seq, src_rank, offset,
                  dests, signatures=None) -> int

The small AllGather's node packets, one per other node: row i of ``outbox`` (uint8 [>= k, >= 64 +
payload_len], writeable) gets a header (window_id, seq, src_rank, dest_node and dest_bitmap from
``dests[i]`` = (dest_node, dest_bitmap), offset, payload_len) followed by
staging[staging_offset : staging_offset + payload_len] (bounds-checked). With ``signatures`` =
(ctrl, parity, signature_bytes, local_size), the local ranks' signature slots of that round parity
in the node control segment are compared first (as round_collect does): if they differ, every packet is payload-less (payload_len 0,
offset 0), which tells the receivers the node's ranks disagreed. Returns the bytes of each packet:
64 + payload_len, or 64 for payload-less ones.)");
    m.def("land_node_packet", &py_land_node_packet, py::arg("packet"), py::arg("staging"), py::arg("window_id"),
          py::arg("seq"), py::arg("num_local_ranks"), py::arg("spans"),
          R"(land_node_packet(packet, staging, window_id, seq, num_local_ranks, spans) -> int

Land a node packet (pack_node_packets) received into ``packet`` (uint8, header + payload, possibly
longer): if its header is valid (as parse_header checks it, with num_local_ranks), has this
``window_id`` and ``seq``, no flags, and its sender s has spans[s] = (offset, payload_len) with
payload_len > 0 equal to the header's offset and payload_len, copies the payload to
staging[offset : offset + payload_len] (bounds-checked) and returns s. Otherwise copies nothing and
returns -1: the caller's full check then says what is wrong. spans: int64 [world_size, 2], rows
with payload_len <= 0 for ranks that send no such packet.)");
    m.def("crc32c", &py_crc32c, py::arg("data"), py::arg("prev") = 0,
          R"(crc32c(data, prev=0) -> int

CRC32C (Castagnoli) of ``data`` (uint8, C-contiguous), continuing from ``prev``:
crc32c(b, crc32c(a)) == crc32c(a + b). crc32c(b"123456789") == 0xE3069283.)");
}

}  // namespace mw
