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

// How far ahead of the copy the source is prefetched. Gathers jump between rows, which stops the
// hardware prefetcher at every jump, so the prefetch stream continues into the next row to copy.
constexpr uint64_t kPrefetchAhead = 2048;

// Total bytes from which pack/unpack stream their rows (beyond a private L2 and a share of L3).
constexpr uint64_t kStreamBytes = uint64_t(8) << 20;

// Copy n bytes; with ``stream``, non-temporal stores and a software prefetch that runs
// kPrefetchAhead bytes ahead, continuing at ``next`` (the next row to be copied) past this row's end.
inline void copy_row(uint8_t* dst, const uint8_t* src, uint64_t n, bool stream, const uint8_t* next = nullptr) {
#if defined(__x86_64__)
    if (stream && n >= 256) {
        // Stream whole 64-byte lines only: a line shared with a record header (written with normal
        // stores) would force partial write-combining flushes, which are slow.
        const uint64_t head = (64 - (reinterpret_cast<uintptr_t>(dst) & 63)) & 63;
        std::memcpy(dst, src, head);
        dst += head;
        src += head;
        n -= head;
        uint64_t i = 0;
        for (; i + 64 <= n; i += 64) {
            const uint64_t ahead = i + kPrefetchAhead;
            __builtin_prefetch(ahead < n || !next ? src + ahead : next + (ahead - n));
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
