// Dispatch records: pack (sender), validate / count / unpack per local rank (receiver), fan-out
// positions (combine). Record layout in docs/core_api.md, "Dispatch records".
#include <algorithm>
#include <vector>

#include "arrays.hpp"
#include "copy.hpp"

namespace mw {
namespace {

struct Layout {
    uint64_t row_bytes = 0, k = 0;
    uint64_t off_idx = 16, off_w = 0, off_row = 0, size = 0;
};

Layout layout(int64_t row_bytes, int64_t k) {
    if (row_bytes < 0) value_error("row_bytes must be >= 0, got ", row_bytes);
    if (k < 0) value_error("k must be >= 0, got ", k);
    if (row_bytes > (int64_t(1) << 48) || k > (int64_t(1) << 32))
        value_error("record too large: row_bytes ", row_bytes, ", k ", k);
    Layout L;
    L.row_bytes = static_cast<uint64_t>(row_bytes);
    L.k = static_cast<uint64_t>(k);
    L.off_w = 16 + 8 * L.k;
    L.off_row = L.off_w + round_up8(4 * L.k);
    L.size = L.off_row + round_up8(L.row_bytes);
    return L;
}

// Check a received record buffer; count records per local rank (counts[64], may be null).
// Returns the number of records.
uint64_t validate_records(const uint8_t* buf, uint64_t n, const Layout& L, int num_local_ranks, int64_t* counts) {
    if (n % L.size != 0)
        packet_error("record buffer of ", n, " bytes is not a whole number of ", L.size, "-byte records (",
                     n % L.size, " trailing bytes; row_bytes ", L.row_bytes, ", k ", L.k, ")");
    const uint64_t M = n / L.size;
    int64_t prev = -1;
    for (uint64_t j = 0; j < M; ++j) {
        const uint8_t* rec = buf + j * L.size;
        const int64_t src = load<int64_t>(rec);
        const uint64_t bm = load<uint64_t>(rec + 8);
        if (src < 0) packet_error("record ", j, ": src_token ", src, " is negative");
        if (src <= prev)
            packet_error("record ", j, ": src_token ", src, " does not follow ", prev,
                         " (records must be in increasing src_token order)");
        if (bm == 0) packet_error("record ", j, " (src_token ", src, "): empty destination bitmap");
        if (beyond(bm, num_local_ranks))
            packet_error("record ", j, " (src_token ", src, "): bitmap ", hex(bm), " names local rank ",
                         top_bit(bm), " but the node has ", num_local_ranks, " local ranks");
        prev = src;
        if (counts)
            for (uint64_t b = bm; b; b &= b - 1) ++counts[__builtin_ctzll(b)];
    }
    return M;
}

const uint8_t* record_buffer(const py::array& buf) {
    require(buf, "buf", DT::U8, -1);
    return cdata<uint8_t>(buf);
}

int64_t py_record_size(int64_t row_bytes, int64_t k) { return static_cast<int64_t>(layout(row_bytes, k).size); }

int64_t py_pack_records(py::array x, py::array topk_idx, py::array topk_weights, py::array token_idx,
                        py::array rank_bitmap, py::array out) {
    require(x, "x", DT::U8, 2);
    require(topk_idx, "topk_idx", DT::I64, 2);
    require(topk_weights, "topk_weights", DT::F32, 2);
    require(token_idx, "token_idx", DT::I64, 1);
    require(rank_bitmap, "rank_bitmap", DT::U64, 1);
    require(out, "out", DT::U8, -1, true);
    const int64_t T = x.shape(0);
    const Layout L = layout(x.shape(1), topk_idx.shape(1));
    if (topk_idx.shape(0) != T)
        value_error("topk_idx has ", topk_idx.shape(0), " rows, x has ", T);
    if (topk_weights.shape(0) != T || topk_weights.shape(1) != static_cast<py::ssize_t>(L.k))
        value_error("topk_weights has shape ", shape_str(topk_weights), ", expected (", T, ", ", L.k, ")");
    const int64_t M = token_idx.shape(0);
    if (rank_bitmap.shape(0) != M)
        value_error("rank_bitmap has ", rank_bitmap.shape(0), " entries, token_idx has ", M);
    uint64_t need;
    if (!mul_ok(static_cast<uint64_t>(M), L.size, &need))
        value_error(M, " records of ", L.size, " bytes overflow 64 bits");
    if (nbytes(out) < need)
        value_error("out has ", nbytes(out), " bytes, ", M, " records of ", L.size, " bytes need ", need);
    const uint8_t* xs = cdata<uint8_t>(x);
    const int64_t* ids = cdata<int64_t>(topk_idx);
    const float* ws = cdata<float>(topk_weights);
    const int64_t* ti = cdata<int64_t>(token_idx);
    const uint64_t* bm = cdata<uint64_t>(rank_bitmap);
    uint8_t* o = mdata<uint8_t>(out);
    {
        py::gil_scoped_release nogil;
        int64_t prev = -1;
        for (int64_t j = 0; j < M; ++j) {
            if (ti[j] < 0 || ti[j] >= T)
                value_error("token_idx[", j, "] = ", ti[j], " is outside [0, ", T, ")");
            if (ti[j] <= prev)
                value_error("token_idx[", j, "] = ", ti[j], " does not follow ", prev, " (must be strictly increasing)");
            if (bm[j] == 0) value_error("rank_bitmap[", j, "] is 0 (token ", ti[j], " has no destination)");
            prev = ti[j];
        }
        const uint64_t k = L.k, rb = L.row_bytes;
        const uint64_t w_pad = L.off_row - L.off_w - 4 * k, row_pad = L.size - L.off_row - rb;
        const bool stream = need >= kStreamBytes;
        for (int64_t j = 0; j < M; ++j) {
            uint8_t* rec = o + static_cast<uint64_t>(j) * L.size;
            const uint64_t t = static_cast<uint64_t>(ti[j]);
            store<int64_t>(rec, ti[j]);
            store<uint64_t>(rec + 8, bm[j]);
            std::memcpy(rec + L.off_idx, ids + t * k, 8 * k);
            std::memcpy(rec + L.off_w, ws + t * k, 4 * k);
            std::memset(rec + L.off_w + 4 * k, 0, w_pad);
            const uint8_t* next = j + 1 < M ? xs + static_cast<uint64_t>(ti[j + 1]) * rb : nullptr;
            copy_row(rec + L.off_row, xs + t * rb, rb, stream, next);
            std::memset(rec + L.off_row + rb, 0, row_pad);
        }
        if (stream) stream_fence();
    }
    return static_cast<int64_t>(need);
}

py::array_t<int64_t> py_fanout_counts(py::array buf, int64_t row_bytes, int64_t k, int64_t num_local_ranks) {
    const Layout L = layout(row_bytes, k);
    const int nl = local_ranks_arg(num_local_ranks);
    const uint8_t* p = record_buffer(buf);
    int64_t counts[MAX_LOCAL_RANKS] = {0};
    {
        py::gil_scoped_release nogil;
        validate_records(p, nbytes(buf), L, nl, counts);
    }
    auto out = new_array<int64_t>({nl});
    std::copy(counts, counts + nl, out.mutable_data());
    return out;
}

int64_t py_unpack_records(py::array buf, int64_t row_bytes, int64_t k, int64_t local_rank, int64_t expert_begin,
                          int64_t expert_end, py::array out_x, py::array out_src_token, py::array out_topk_idx,
                          py::array out_topk_weights, int64_t start, py::object num_local_ranks) {
    const Layout L = layout(row_bytes, k);
    const uint8_t* p = record_buffer(buf);
    const int nl = num_local_ranks.is_none()
                       ? MAX_LOCAL_RANKS
                       : local_ranks_arg(to_i64(num_local_ranks, "num_local_ranks"));
    if (local_rank < 0 || local_rank >= nl)
        value_error("local_rank ", local_rank, " is outside [0, ", nl, ")");
    if (expert_begin > expert_end) value_error("expert_begin ", expert_begin, " > expert_end ", expert_end);
    require(out_x, "out_x", DT::U8, 2, true);
    require(out_src_token, "out_src_token", DT::I64, 1, true);
    require(out_topk_idx, "out_topk_idx", DT::I64, 2, true);
    require(out_topk_weights, "out_topk_weights", DT::F32, 2, true);
    const int64_t C = out_x.shape(0);
    if (static_cast<uint64_t>(out_x.shape(1)) != L.row_bytes)
        value_error("out_x has rows of ", out_x.shape(1), " bytes, row_bytes is ", L.row_bytes);
    if (out_src_token.shape(0) != C)
        value_error("out_src_token has ", out_src_token.shape(0), " rows, out_x has ", C);
    if (out_topk_idx.shape(0) != C || static_cast<uint64_t>(out_topk_idx.shape(1)) != L.k)
        value_error("out_topk_idx has shape ", shape_str(out_topk_idx), ", expected (", C, ", ", L.k, ")");
    if (out_topk_weights.shape(0) != C || static_cast<uint64_t>(out_topk_weights.shape(1)) != L.k)
        value_error("out_topk_weights has shape ", shape_str(out_topk_weights), ", expected (", C, ", ", L.k, ")");
    if (start < 0 || start > C) value_error("start ", start, " is outside [0, ", C, "]");
    uint8_t* ox = mdata<uint8_t>(out_x);
    int64_t* os = mdata<int64_t>(out_src_token);
    int64_t* oi = mdata<int64_t>(out_topk_idx);
    float* ow = mdata<float>(out_topk_weights);
    const uint64_t n = nbytes(buf);
    int64_t written = 0;
    {
        py::gil_scoped_release nogil;
        int64_t counts[MAX_LOCAL_RANKS] = {0};
        const uint64_t M = validate_records(p, n, L, nl, counts);
        const int64_t mine = counts[local_rank];
        if (mine > C - start)
            value_error("outputs have room for ", C - start, " rows from row ", start, ", the buffer holds ", mine,
                        " records for local rank ", local_rank);
        const uint64_t k = L.k, rb = L.row_bytes;
        const uint64_t bit = uint64_t(1) << local_rank;
        const bool stream = static_cast<uint64_t>(mine) * rb >= kStreamBytes;
        int64_t row = start;
        for (uint64_t j = 0; j < M; ++j) {
            const uint8_t* rec = p + j * L.size;
            if (!(load<uint64_t>(rec + 8) & bit)) continue;
            os[row] = load<int64_t>(rec);
            int64_t* dst_ids = oi + static_cast<uint64_t>(row) * k;
            for (uint64_t i = 0; i < k; ++i) {
                const int64_t e = load<int64_t>(rec + L.off_idx + 8 * i);
                dst_ids[i] = (e >= expert_begin && e < expert_end) ? e - expert_begin : -1;
            }
            std::memcpy(ow + static_cast<uint64_t>(row) * k, rec + L.off_w, 4 * k);
            copy_row(ox + static_cast<uint64_t>(row) * rb, rec + L.off_row, rb, stream);
            ++row;
        }
        if (stream) stream_fence();
        written = row - start;
    }
    return written;
}

py::array_t<int64_t> py_fanout_positions(py::array rank_bitmap, int64_t num_local_ranks) {
    require(rank_bitmap, "rank_bitmap", DT::U64, 1);
    const int nl = local_ranks_arg(num_local_ranks);
    const int64_t M = rank_bitmap.shape(0);
    const uint64_t* bm = cdata<uint64_t>(rank_bitmap);
    auto out = new_array<int64_t>({M, nl});
    int64_t* o = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        int64_t next[MAX_LOCAL_RANKS] = {0};
        for (int64_t j = 0; j < M; ++j) {
            if (bm[j] == 0) value_error("rank_bitmap[", j, "] is 0");
            if (beyond(bm[j], nl))
                value_error("rank_bitmap[", j, "] = ", hex(bm[j]), " names local rank ", top_bit(bm[j]),
                            " >= num_local_ranks ", nl);
            for (int l = 0; l < nl; ++l) o[j * nl + l] = (bm[j] >> l & 1) ? next[l]++ : -1;
        }
    }
    return out;
}

}  // namespace

void register_pack(py::module_& m) {
    m.def("record_size", &py_record_size, py::arg("row_bytes"), py::arg("k"),
          R"(record_size(row_bytes, k) -> int

Bytes of one dispatch record: 16 + 8*k + round_up(4*k, 8) + round_up(row_bytes, 8).)");

    m.def("pack_records", &py_pack_records, py::arg("x"), py::arg("topk_idx"), py::arg("topk_weights"),
          py::arg("token_idx"), py::arg("rank_bitmap"), py::arg("out"),
          R"(pack_records(x, topk_idx, topk_weights, token_idx, rank_bitmap, out) -> int

Write one dispatch record per planned token into caller-provided memory; returns bytes written
(M * record_size(row_bytes, k)). Padding bytes are zeroed.
x:            uint8 [T, row_bytes], C-contiguous (view any dtype's rows as bytes).
topk_idx:     int64 [T, k] (global expert ids, copied as is).  topk_weights: float32 [T, k].
token_idx:    int64 [M], strictly increasing, in [0, T).  rank_bitmap: uint64 [M], nonzero.
out:          uint8, C-contiguous, writeable, >= M * record_size bytes.)");

    m.def("fanout_counts", &py_fanout_counts, py::arg("buf"), py::arg("row_bytes"), py::arg("k"),
          py::arg("num_local_ranks"),
          R"(fanout_counts(buf, row_bytes, k, num_local_ranks) -> int64 [num_local_ranks]

Validate a received record buffer (uint8, C-contiguous: a whole number of records, bitmaps nonzero
and < 2**num_local_ranks, src_token >= 0 and strictly increasing; PacketError otherwise) and count
the records bound for each local rank.)");

    m.def("unpack_records", &py_unpack_records, py::arg("buf"), py::arg("row_bytes"), py::arg("k"),
          py::arg("local_rank"), py::arg("expert_begin"), py::arg("expert_end"), py::arg("out_x"),
          py::arg("out_src_token"), py::arg("out_topk_idx"), py::arg("out_topk_weights"), py::arg("start") = 0,
          py::kw_only(), py::arg("num_local_ranks") = py::none(),
          R"(unpack_records(buf, row_bytes, k, local_rank, expert_begin, expert_end, out_x, out_src_token, out_topk_idx, out_topk_weights, start=0, *, num_local_ranks=None) -> int

Copy every record of ``buf`` whose bitmap has bit ``local_rank`` into the outputs, in buffer order,
from row ``start`` on; returns the number of rows written.
buf:              uint8 record buffer, validated as fanout_counts does (bitmaps < 2**num_local_ranks
                  when given).
out_x:            uint8 [C, row_bytes], C-contiguous, writeable.
out_src_token:    int64 [C].
out_topk_idx:     int64 [C, k]: local expert ids e - expert_begin for expert_begin <= e < expert_end,
                  else -1.
out_topk_weights: float32 [C, k], copied as is.
Raises ValueError (before writing anything) when the rows do not fit in C - start.)");

    m.def("fanout_positions", &py_fanout_positions, py::arg("rank_bitmap"), py::arg("num_local_ranks"),
          R"(fanout_positions(rank_bitmap, num_local_ranks) -> int64 [M, num_local_ranks]

rank_bitmap: uint64 [M], nonzero and < 2**num_local_ranks. For record j and local rank l: the row of
record j in local rank l's unpacked output (records with bit l, counted in order), or -1.)");
}

}  // namespace mw
