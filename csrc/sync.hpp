// Shared-memory words of the node control segment, used by sync.cpp (atomics, futexes, rounds) and
// packet.cpp (the small AllGather's node packets, which land in a round's staging area).
#pragma once

#include <climits>
#include <cstring>

#include "arrays.hpp"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace mw {

// The u32 word at byte offset ``off`` of ``buf``, every check done first.
inline uint32_t* word(py::array& buf, py::handle off, bool writeable) {
    require(buf, "buf", DT::U8, -1, writeable);
    const uint64_t o = to_u64(off, "offset");
    const uint64_t n = nbytes(buf);
    if (o % 4 != 0) value_error("offset ", o, " is not a multiple of 4");
    if (n < 4 || o > n - 4) value_error("offset ", o, " + 4 exceeds the buffer of ", n, " bytes");
    uint8_t* p = static_cast<uint8_t*>(const_cast<void*>(buf.data())) + o;
    if (reinterpret_cast<uintptr_t>(p) % 4 != 0)
        value_error("word at offset ", o, " is not 4-byte aligned in memory (the array starts at a misaligned address)");
    return reinterpret_cast<uint32_t*>(p);
}

inline int futex_wake_all(uint32_t* addr) {
#if defined(__linux__)
    long r = syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
    return r < 0 ? 0 : static_cast<int>(r);
#else
    (void)addr;
    return 0;
#endif
}

// Bytes [off, off + len) of ``buf`` (uint8, C-contiguous), bounds-checked.
inline uint8_t* byte_span(py::array& buf, const char* name, uint64_t off, uint64_t len, bool writeable) {
    require(buf, name, DT::U8, -1, writeable);
    const uint64_t n = nbytes(buf);
    if (off > n || len > n - off) value_error(name, ": bytes [", off, ", ", off + len, ") exceed its ", n, " bytes");
    return static_cast<uint8_t*>(const_cast<void*>(buf.data())) + off;
}

// Count ``count`` chunks on the round counter ``w`` (value ``start`` before the round, ``end`` once it
// is complete, mod 2**32); wake the waiters only with the arrival that completes the round.
inline void round_count(uint32_t* w, uint32_t count, uint32_t start, uint32_t end) {
    const uint32_t landed = __atomic_add_fetch(w, count, __ATOMIC_SEQ_CST) - start;
    const int64_t before = static_cast<int64_t>(landed) - count;
    if (before < static_cast<int64_t>(end - start) && end - start <= landed) futex_wake_all(w);
}

// ---- the node control segment -------------------------------------------------------------------
// One per node and group (multiwrite.group.Group.ctrl), mapped by every rank of the node. Its layout
// is defined here, once; Python reads the offsets from _core.NODE_CONTROL.

// A u32 word on a cache line of its own (a waiter sleeps on it; writers of other words do not wake it).
struct alignas(64) Line {
    uint32_t value;
    uint8_t pad[60];
};

// 64 bytes: a call's signature (up to 7 int64 and one more value) or a failure status and message.
struct Slot {
    int64_t words[8];
};

struct NodeControl {
    Line barrier;                                  // node barrier arrivals, monotonic
    char grow_name[192];                           // name of a shared buffer being grown ("!" + why: failed)
    uint32_t epoch[MAX_LOCAL_RANKS];               // barriers each local rank has entered
    Slot sync[2][MAX_LOCAL_RANKS];                 // node_agree / node_sync: a slot per rank, two banks by barrier parity
    // Barrier-free rounds (small collectives), two of everything by round parity:
    Line round_count[2];                           // chunks landed in the round, monotonic
    Line round_error[2];                           // number of the round that failed on this node
    char round_message[2][256];                    // byte 0: the failure's kind, then what failed
    Line round_own[2];                             // the local ranks' own chunks landed
    Slot round_signature[2][MAX_LOCAL_RANKS];      // each local rank's signature of the round
    Slot announce[MAX_LOCAL_RANKS];                // (seq, signature) of the call each local rank entered
};

// The control segment in ``ctrl`` (uint8, at least sizeof(NodeControl) bytes, 64-byte aligned).
inline NodeControl* node_control(py::array& ctrl, bool writeable) {
    uint8_t* p = byte_span(ctrl, "ctrl", 0, sizeof(NodeControl), writeable);
    if (reinterpret_cast<uintptr_t>(p) % 64 != 0) value_error("ctrl is not 64-byte aligned in memory");
    return reinterpret_cast<NodeControl*>(p);
}

// A round parity argument (0 or 1).
inline int parity_arg(py::handle h) {
    return static_cast<int>(to_u64(h, "parity", 1));
}

// The first ``sig_bytes`` of the ``L`` signature slots of round parity ``parity``, checked.
inline const uint8_t* round_signatures(py::array& ctrl, int parity, uint64_t sig_bytes, uint64_t L) {
    if (sig_bytes > 64) value_error("signature_bytes must be <= 64, got ", sig_bytes);
    if (L > static_cast<uint64_t>(MAX_LOCAL_RANKS)) value_error("local_size must be <= ", MAX_LOCAL_RANKS, ", got ", L);
    return reinterpret_cast<const uint8_t*>(node_control(ctrl, false)->round_signature[parity]);
}

// True when the first ``sig_bytes`` of the ``L`` 64-byte signature slots at ``sigs`` are equal (the
// local ranks of a round called the same operation with the same arguments).
inline bool signatures_agree(const uint8_t* sigs, uint64_t sig_bytes, uint64_t L) {
    for (uint64_t i = 1; i < L; ++i)
        if (std::memcmp(sigs, sigs + 64 * i, sig_bytes) != 0) return false;
    return true;
}

}  // namespace mw
