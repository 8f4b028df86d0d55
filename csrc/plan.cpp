// Dispatch layout and dedup planning: which tokens go to which rank / node, each counted once.
#include <algorithm>
#include <vector>

#include "arrays.hpp"

namespace mw {
namespace {

// A validated topk_idx [T, k] with E experts over P ranks (expert e on rank e / (E / P)).
struct Routing {
    const int64_t* idx = nullptr;
    int64_t T = 0, k = 0, E = 0, P = 0, per_rank = 1;
    int64_t rank_of(int64_t e) const { return e / per_rank; }
};

Routing routing(const py::array& topk_idx, int64_t num_experts, int64_t num_ranks) {
    require(topk_idx, "topk_idx", DT::I64, 2);
    Routing r;
    r.idx = cdata<int64_t>(topk_idx);
    r.T = topk_idx.shape(0);
    r.k = topk_idx.shape(1);
    if (num_ranks < 1) value_error("the number of ranks must be >= 1, got ", num_ranks);
    if (num_experts < 1) value_error("num_experts must be >= 1, got ", num_experts);
    if (num_experts % num_ranks != 0)
        value_error("num_experts ", num_experts, " is not a multiple of the number of ranks ", num_ranks);
    r.E = num_experts;
    r.P = num_ranks;
    r.per_rank = num_experts / num_ranks;
    // Every id in [-1, E) before anything indexes with it.
    {
        py::gil_scoped_release nogil;
        const int64_t n = r.T * r.k;
        for (int64_t i = 0; i < n; ++i) {
            int64_t e = r.idx[i];
            if (e < -1 || e >= r.E)
                value_error("topk_idx[", i / r.k, ", ", i % r.k, "] = ", e, " is outside [-1, ", r.E,
                            ") (num_experts = ", r.E, ")");
        }
    }
    return r;
}

// rank_to_node [P] -> N, checking the ids form 0..N-1.
int64_t num_nodes_of(const std::vector<int64_t>& node, const char* name) {
    const int64_t P = static_cast<int64_t>(node.size());
    int64_t N = 0;
    for (int64_t r = 0; r < P; ++r) {
        if (node[r] < 0 || node[r] >= P)
            value_error(name, "[", r, "] = ", node[r], " is not a node id for ", P,
                        " ranks (node ids must form 0..N-1)");
        N = std::max(N, node[r] + 1);
    }
    std::vector<char> seen(static_cast<size_t>(N), 0);
    for (int64_t r = 0; r < P; ++r) seen[node[r]] = 1;
    for (int64_t n = 0; n < N; ++n)
        if (!seen[n]) value_error(name, ": node ", n, " has no rank, node ids must form 0..N-1 (N = ", N, ")");
    return N;
}

py::tuple py_dispatch_layout(py::array topk_idx, int64_t num_experts, py::array rank_to_node) {
    std::vector<int64_t> node = int_map(rank_to_node, "rank_to_node");
    const int64_t P = static_cast<int64_t>(node.size());
    if (P < 1) value_error("rank_to_node must have at least one rank");
    Routing rt = routing(topk_idx, num_experts, P);
    const int64_t N = num_nodes_of(node, "rank_to_node");
    auto per_rank = new_array<int64_t>({P});
    auto per_node = new_array<int64_t>({N});
    auto per_expert = new_array<int64_t>({rt.E});
    auto in_rank = new_array<bool>({rt.T, P});
    int64_t* pr = per_rank.mutable_data();
    int64_t* pn = per_node.mutable_data();
    int64_t* pe = per_expert.mutable_data();
    bool* ir = in_rank.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::fill(pr, pr + P, 0);
        std::fill(pn, pn + N, 0);
        std::fill(pe, pe + rt.E, 0);
        std::fill(ir, ir + rt.T * P, false);
        std::vector<int64_t> seen_rank(P, -1), seen_node(N, -1), seen_expert(rt.E, -1);
        for (int64_t t = 0; t < rt.T; ++t) {
            const int64_t* row = rt.idx + t * rt.k;
            for (int64_t j = 0; j < rt.k; ++j) {
                const int64_t e = row[j];
                if (e < 0) continue;
                if (seen_expert[e] != t) {
                    seen_expert[e] = t;
                    ++pe[e];
                }
                const int64_t r = rt.rank_of(e);
                if (seen_rank[r] == t) continue;
                seen_rank[r] = t;
                ++pr[r];
                ir[t * P + r] = true;
                const int64_t n = node[r];
                if (seen_node[n] != t) {
                    seen_node[n] = t;
                    ++pn[n];
                }
            }
        }
    }
    return py::make_tuple(per_rank, per_node, per_expert, in_rank);
}

py::tuple py_plan_dispatch(py::array topk_idx, int64_t num_experts, py::array rank_to_node,
                           py::array local_rank_of) {
    std::vector<int64_t> node = int_map(rank_to_node, "rank_to_node");
    std::vector<int64_t> local = int_map(local_rank_of, "local_rank_of");
    const int64_t P = static_cast<int64_t>(node.size());
    if (P < 1) value_error("rank_to_node must have at least one rank");
    if (static_cast<int64_t>(local.size()) != P)
        value_error("local_rank_of has ", local.size(), " entries, rank_to_node has ", P);
    Routing rt = routing(topk_idx, num_experts, P);
    const int64_t N = num_nodes_of(node, "rank_to_node");
    std::vector<int64_t> owner(static_cast<size_t>(N) * MAX_LOCAL_RANKS, -1);
    for (int64_t r = 0; r < P; ++r) {
        if (local[r] < 0 || local[r] >= MAX_LOCAL_RANKS)
            value_error("local_rank_of[", r, "] = ", local[r], " is outside [0, ", MAX_LOCAL_RANKS, ")");
        int64_t& o = owner[node[r] * MAX_LOCAL_RANKS + local[r]];
        if (o >= 0)
            value_error("local_rank_of[", r, "] = ", local[r], " repeats local rank ", local[r], " of rank ", o,
                        " on node ", node[r]);
        o = r;
    }

    auto offsets = new_array<int64_t>({N + 1});
    int64_t* off = offsets.mutable_data();
    std::vector<int64_t> seen_node(N, -1);
    {
        py::gil_scoped_release nogil;
        std::fill(off, off + N + 1, 0);
        for (int64_t t = 0; t < rt.T; ++t)
            for (int64_t j = 0; j < rt.k; ++j) {
                const int64_t e = rt.idx[t * rt.k + j];
                if (e < 0) continue;
                const int64_t n = node[rt.rank_of(e)];
                if (seen_node[n] != t) {
                    seen_node[n] = t;
                    ++off[n + 1];
                }
            }
        for (int64_t n = 0; n < N; ++n) off[n + 1] += off[n];
    }
    const int64_t M = off[N];
    auto token_idx = new_array<int64_t>({M});
    auto bitmap = new_array<uint64_t>({M});
    int64_t* ti = token_idx.mutable_data();
    uint64_t* bm = bitmap.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::vector<int64_t> cursor(off, off + N);
        std::vector<uint64_t> acc(N, 0);
        std::vector<int64_t> touched;
        touched.reserve(static_cast<size_t>(rt.k));
        for (int64_t t = 0; t < rt.T; ++t) {
            touched.clear();
            for (int64_t j = 0; j < rt.k; ++j) {
                const int64_t e = rt.idx[t * rt.k + j];
                if (e < 0) continue;
                const int64_t r = rt.rank_of(e);
                const int64_t n = node[r];
                if (acc[n] == 0) touched.push_back(n);
                acc[n] |= uint64_t(1) << local[r];
            }
            for (int64_t n : touched) {
                const int64_t c = cursor[n]++;
                ti[c] = t;
                bm[c] = acc[n];
                acc[n] = 0;
            }
        }
    }
    return py::make_tuple(offsets, token_idx, bitmap);
}

py::tuple py_plan_dispatch_per_rank(py::array topk_idx, int64_t num_experts, int64_t num_ranks) {
    Routing rt = routing(topk_idx, num_experts, num_ranks);
    const int64_t P = rt.P;
    auto offsets = new_array<int64_t>({P + 1});
    int64_t* off = offsets.mutable_data();
    std::vector<int64_t> seen(P, -1);
    {
        py::gil_scoped_release nogil;
        std::fill(off, off + P + 1, 0);
        for (int64_t t = 0; t < rt.T; ++t)
            for (int64_t j = 0; j < rt.k; ++j) {
                const int64_t e = rt.idx[t * rt.k + j];
                if (e < 0) continue;
                const int64_t r = rt.rank_of(e);
                if (seen[r] != t) {
                    seen[r] = t;
                    ++off[r + 1];
                }
            }
        for (int64_t r = 0; r < P; ++r) off[r + 1] += off[r];
    }
    auto token_idx = new_array<int64_t>({off[P]});
    int64_t* ti = token_idx.mutable_data();
    {
        py::gil_scoped_release nogil;
        std::vector<int64_t> cursor(off, off + P);
        std::fill(seen.begin(), seen.end(), -1);
        for (int64_t t = 0; t < rt.T; ++t)
            for (int64_t j = 0; j < rt.k; ++j) {
                const int64_t e = rt.idx[t * rt.k + j];
                if (e < 0) continue;
                const int64_t r = rt.rank_of(e);
                if (seen[r] != t) {
                    seen[r] = t;
                    ti[cursor[r]++] = t;
                }
            }
    }
    return py::make_tuple(offsets, token_idx);
}

}  // namespace

void register_plan(py::module_& m) {
    m.def("dispatch_layout", &py_dispatch_layout, py::arg("topk_idx"), py::arg("num_experts"),
          py::arg("rank_to_node"),
          R"(dispatch_layout(topk_idx, num_experts, rank_to_node) -> (num_tokens_per_rank, num_tokens_per_node, num_tokens_per_expert, is_token_in_rank)

topk_idx:     int64 [T, k], C-contiguous; expert ids in [0, E) or -1 (no expert).
num_experts:  E, a multiple of P; expert e lives on rank e // (E // P).
rank_to_node: int32 or int64 [P]; node ids forming 0..N-1 (any order, unequal node sizes allowed).
Returns int64 [P], int64 [N], int64 [E], bool [T, P]: tokens per rank / node / expert, each token
counted once per rank, node or expert however many of its slots point there.
Raises ValueError for E % P != 0, ids outside [-1, E) or a bad node map.)");

    m.def("plan_dispatch", &py_plan_dispatch, py::arg("topk_idx"), py::arg("num_experts"), py::arg("rank_to_node"),
          py::arg("local_rank_of"),
          R"(plan_dispatch(topk_idx, num_experts, rank_to_node, local_rank_of) -> (node_offsets, token_idx, rank_bitmap)

The MultiWrite (per-node dedup) dispatch plan.
topk_idx int64 [T, k], num_experts E, rank_to_node int32/int64 [P] as in dispatch_layout;
local_rank_of int32/int64 [P]: each rank's index on its node, < 64 and unique within a node.
Returns node_offsets int64 [N+1], token_idx int64 [M], rank_bitmap uint64 [M]: entries
node_offsets[n]:node_offsets[n+1] are the tokens going to node n, ascending, each with the bitmap
of its destination local ranks on n (bit local_rank_of[r] for every destination rank r).)");

    m.def("plan_dispatch_per_rank", &py_plan_dispatch_per_rank, py::arg("topk_idx"), py::arg("num_experts"),
          py::arg("num_ranks"),
          R"(plan_dispatch_per_rank(topk_idx, num_experts, num_ranks) -> (rank_offsets, token_idx)

The unicast (per-rank dedup) dispatch plan: topk_idx int64 [T, k], E experts on P = num_ranks ranks.
Returns rank_offsets int64 [P+1] and token_idx int64 [M]: entries rank_offsets[r]:rank_offsets[r+1]
are the tokens (ascending) that chose at least one expert of rank r.)");
}

}  // namespace mw
