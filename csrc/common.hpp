// Pure C++ helpers shared by the core: error types, message formatting, overflow-checked
// arithmetic and little-endian loads/stores. No Python here, so everything in this header may run
// with the GIL released.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace mw {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "multiwrite's wire format is little-endian");

// Translated to Python ValueError (bad arguments: shapes, dtypes, ranges).
struct ValueError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// Translated to multiwrite._core.PacketError (a ValueError): malformed packets and record buffers.
struct PacketError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

template <class... A>
std::string fmt(const A&... a) {
    std::ostringstream s;
    (s << ... << a);
    return s.str();
}

template <class... A>
[[noreturn]] void value_error(const A&... a) {
    throw ValueError(fmt(a...));
}

template <class... A>
[[noreturn]] void packet_error(const A&... a) {
    throw PacketError(fmt(a...));
}

inline std::string hex(uint64_t v) {
    std::ostringstream s;
    s << "0x" << std::hex << std::uppercase << v;
    return s.str();
}

// Overflow-checked size arithmetic: return false on overflow.
inline bool add_ok(uint64_t a, uint64_t b, uint64_t* r) { return !__builtin_add_overflow(a, b, r); }
inline bool mul_ok(uint64_t a, uint64_t b, uint64_t* r) { return !__builtin_mul_overflow(a, b, r); }

inline uint64_t round_up8(uint64_t x) { return (x + 7) & ~uint64_t(7); }  // caller keeps x < 2^64-7

template <class T>
inline T load(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

template <class T>
inline void store(uint8_t* p, T v) {
    std::memcpy(p, &v, sizeof(T));
}

inline int popcount64(uint64_t x) { return __builtin_popcountll(x); }
inline int top_bit(uint64_t x) { return 63 - __builtin_clzll(x); }  // x != 0

// True when bitmap names a local rank >= num_local_ranks (1..64).
inline bool beyond(uint64_t bitmap, int num_local_ranks) {
    return num_local_ranks < 64 && (bitmap >> num_local_ranks) != 0;
}

constexpr int MAX_LOCAL_RANKS = 64;

// A num_local_ranks argument: 1..64.
inline int local_ranks_arg(int64_t num_local_ranks) {
    if (num_local_ranks < 1 || num_local_ranks > MAX_LOCAL_RANKS)
        value_error("num_local_ranks must be in [1, 64], got ", num_local_ranks);
    return static_cast<int>(num_local_ranks);
}

}  // namespace mw
