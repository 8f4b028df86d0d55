// Row copies for pack/unpack. Large transfers (well beyond the caches) use non-temporal stores, as
// glibc's memcpy does for large sizes, so a row-by-row copy keeps pace with one big memcpy.
// SSE2 is part of x86-64, so this needs no -march; other targets use memcpy.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

namespace mw {

// Total bytes from which pack/unpack stream their rows (beyond a private L2 and a share of L3).
constexpr uint64_t kStreamBytes = uint64_t(8) << 20;

inline void copy_row(uint8_t* dst, const uint8_t* src, uint64_t n, bool stream) {
#if defined(__x86_64__)
    if (stream && n >= 256) {
        const uint64_t head = (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15;
        std::memcpy(dst, src, head);
        dst += head;
        src += head;
        n -= head;
        uint64_t i = 0;
        for (; i + 64 <= n; i += 64) {
            __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
            __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
            __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
            __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
            _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
            _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
            _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
            _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
        }
        std::memcpy(dst + i, src + i, n - i);
        return;
    }
#endif
    std::memcpy(dst, src, n);
}

// Order streamed stores before anything that follows (a notify, a flag).
inline void stream_fence() {
#if defined(__x86_64__)
    _mm_sfence();
#endif
}

}  // namespace mw
