// Deterministic gather-reduce for combine: out[s] = sum_f src[index[s, f]] in float32, rounded once.
#include <algorithm>
#include <vector>

#include "arrays.hpp"

namespace mw {
namespace {

inline float bits_to_float(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline uint32_t float_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

// bfloat16 (stored as uint16): widening is exact; narrowing rounds to nearest even, NaN -> 0x7FC0.
struct BF16 {
    using T = uint16_t;
    static float load(uint16_t h) { return bits_to_float(uint32_t(h) << 16); }
    static uint16_t store(float f) {
        uint32_t u = float_to_bits(f);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
        u += 0x7FFFu + ((u >> 16) & 1u);
        return static_cast<uint16_t>(u >> 16);
    }
};

// IEEE binary16: exact widening; narrowing rounds to nearest even with subnormals, overflow to inf.
// Branch-free (every case computed, one selected) so that the loops vectorize.
struct F16 {
    using T = uint16_t;
    static float load(uint16_t h) {
        const uint32_t sign = uint32_t(h & 0x8000u) << 16;
        const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
        // zero or subnormal: man * 2^-24, exact in float
        const uint32_t tiny = float_to_bits(static_cast<float>(static_cast<int32_t>(man)) * 5.9604644775390625e-8f);
        const uint32_t special = 0x7F800000u | (man << 13);            // inf or NaN
        const uint32_t normal = ((exp + 112) << 23) | (man << 13);
        return bits_to_float(sign | (exp == 0 ? tiny : exp == 31 ? special : normal));
    }
    static uint16_t store(float f) {
        uint32_t x = float_to_bits(f);
        const uint32_t sign = x & 0x80000000u;
        x ^= sign;
        const uint32_t huge = x > 0x7F800000u ? 0x7E00u : 0x7C00u;     // >= 65536: NaN, or inf
        // below the smallest normal half (2^-14): adding 0.5 lets the FPU round to a multiple of 2^-24
        const uint32_t tiny = float_to_bits(bits_to_float(x) + bits_to_float(126u << 23)) - (126u << 23);
        const uint32_t normal = (x + (uint32_t(15 - 127) << 23) + 0xFFFu + ((x >> 13) & 1u)) >> 13;
        const uint32_t o = x >= 0x47800000u ? huge : x < 0x38800000u ? tiny : normal;
        return static_cast<uint16_t>(o | (sign >> 16));
    }
};

struct F32 {
    using T = float;
    static float load(float f) { return f; }
    static float store(float f) { return f; }
};

template <class D>
inline void reduce(const typename D::T* src, int64_t H, const int64_t* index, int64_t S, int64_t F,
                   typename D::T* out) {
    std::vector<float> acc(static_cast<size_t>(H));
    for (int64_t s = 0; s < S; ++s) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t f = 0; f < F; ++f) {
            const int64_t i = index[s * F + f];
            if (i < 0) continue;
            const typename D::T* row = src + i * H;
            for (int64_t h = 0; h < H; ++h) acc[h] += D::load(row[h]);
        }
        typename D::T* o = out + s * H;
        for (int64_t h = 0; h < H; ++h) o[h] = D::store(acc[h]);
    }
}

// The same loops compiled for AVX2 (8 floats per instruction instead of SSE2's 4), chosen at run
// time so the wheel stays portable. Each element still gets its additions in index order, so the
// bits equal the baseline build's.
#if defined(__x86_64__) && defined(__GNUC__)
template <class D>
__attribute__((target("avx2"))) void reduce_avx2(const typename D::T* src, int64_t H, const int64_t* index,
                                                 int64_t S, int64_t F, typename D::T* out) {
    reduce<D>(src, H, index, S, F, out);
}
#endif

template <class D>
void reduce_for_cpu(const typename D::T* src, int64_t H, const int64_t* index, int64_t S, int64_t F,
                    typename D::T* out) {
#if defined(__x86_64__) && defined(__GNUC__)
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) return reduce_avx2<D>(src, H, index, S, F, out);
#endif
    reduce<D>(src, H, index, S, F, out);
}

void py_gather_reduce(py::array src, py::array index, py::array out) {
    if (src.ndim() != 2) value_error("src must be 2-D [R, H], got shape ", shape_str(src));
    int kind;  // 0 f32, 1 f16, 2 bf16-as-uint16
    if (is_dt(src, DT::F32)) kind = 0;
    else if (is_dt(src, DT::F16)) kind = 1;
    else if (is_dt(src, DT::U16)) kind = 2;
    else value_error("src must have dtype float32, float16 or uint16 (bfloat16 bits), got ", dtype_str(src));
    const DT dt = kind == 0 ? DT::F32 : kind == 1 ? DT::F16 : DT::U16;
    require(src, "src", dt, 2);
    require(index, "index", DT::I64, 2);
    if (!is_dt(out, dt)) value_error("out must have the dtype of src (", dt_name(dt), "), got ", dtype_str(out));
    require(out, "out", dt, 2, true);
    const int64_t R = src.shape(0), H = src.shape(1), S = index.shape(0), F = index.shape(1);
    if (out.shape(0) != S || out.shape(1) != H)
        value_error("out has shape ", shape_str(out), ", expected (", S, ", ", H, ")");
    const int64_t* idx = cdata<int64_t>(index);
    const void* s = src.data();
    void* o = out.mutable_data();
    py::gil_scoped_release nogil;
    for (int64_t i = 0; i < S * F; ++i)
        if (idx[i] < -1 || idx[i] >= R)
            value_error("index[", i / F, ", ", i % F, "] = ", idx[i], " is outside [-1, ", R, ") (src has ", R,
                        " rows)");
    switch (kind) {
        case 0: reduce_for_cpu<F32>(static_cast<const float*>(s), H, idx, S, F, static_cast<float*>(o)); break;
        case 1: reduce_for_cpu<F16>(static_cast<const uint16_t*>(s), H, idx, S, F, static_cast<uint16_t*>(o)); break;
        default: reduce_for_cpu<BF16>(static_cast<const uint16_t*>(s), H, idx, S, F, static_cast<uint16_t*>(o)); break;
    }
}

}  // namespace

void register_reduce(py::module_& m) {
    m.def("gather_reduce", &py_gather_reduce, py::arg("src"), py::arg("index"), py::arg("out"),
          R"(gather_reduce(src, index, out) -> None

out[s] = sum over f (in order) of src[index[s, f]], accumulated in float32 and rounded once.
src:   [R, H] float32, float16, or uint16 holding bfloat16 bits (pass bfloat16 as uint16);
       C-contiguous.
index: int64 [S, F]: a row of src, or -1 to skip; rows of all -1 give zeros.
out:   [S, H], the dtype of src, C-contiguous, writeable.
Rounding: float16 IEEE round-to-nearest-even (with subnormals), bfloat16 round-to-nearest-even
(NaN -> 0x7FC0). Deterministic: the same inputs give the same bits.)");
}

}  // namespace mw
