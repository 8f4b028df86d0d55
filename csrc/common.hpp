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

constexpr int MAX_LOCAL_RANKS = 64;

}  // namespace mw
