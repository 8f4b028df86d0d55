// Shared-memory synchronisation on u32 words of a uint8 array that maps shared memory: atomics and
// Linux futex wait/wake (non-private, so it works across processes that map the same file), plus a
// bounds-checked copy.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <thread>

#include "arrays.hpp"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#endif

namespace mw {
namespace {

using Clock = std::chrono::steady_clock;

// The u32 word at byte offset ``off`` of ``buf``, every check done first.
uint32_t* word(py::array& buf, py::handle off, bool writeable) {
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

int futex_wake_all(uint32_t* addr) {
#if defined(__linux__)
    long r = syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
    return r < 0 ? 0 : static_cast<int>(r);
#else
    (void)addr;
    return 0;
#endif
}

// Sleep until *addr != expected, a wake, or ``ns`` nanoseconds (spurious wakeups allowed).
void futex_wait(uint32_t* addr, uint32_t expected, int64_t ns) {
#if defined(__linux__)
    struct timespec ts;
    ts.tv_sec = static_cast<time_t>(ns / 1000000000);
    ts.tv_nsec = static_cast<long>(ns % 1000000000);
    syscall(SYS_futex, addr, FUTEX_WAIT, expected, &ts, nullptr, 0);
#else
    (void)addr;
    (void)expected;
    std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<int64_t>(ns, 100000)));
#endif
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

uint32_t py_atomic_load(py::array buf, py::handle off) {
    uint32_t* w = word(buf, off, false);
    return __atomic_load_n(w, __ATOMIC_SEQ_CST);
}

void py_atomic_store(py::array buf, py::handle off, py::handle value) {
    uint32_t* w = word(buf, off, true);
    const uint32_t v = static_cast<uint32_t>(to_u64(value, "value", 0xFFFFFFFFu));
    __atomic_store_n(w, v, __ATOMIC_SEQ_CST);
    futex_wake_all(w);
}

uint32_t py_atomic_add(py::array buf, py::handle off, py::handle value, bool wake) {
    uint32_t* w = word(buf, off, true);
    const uint32_t v = static_cast<uint32_t>(to_u64(value, "value", 0xFFFFFFFFu));
    const uint32_t r = __atomic_add_fetch(w, v, __ATOMIC_SEQ_CST);
    if (wake) futex_wake_all(w);
    return r;
}

int py_futex_wake(py::array buf, py::handle off) {
    uint32_t* w = word(buf, off, false);
    return futex_wake_all(w);
}

bool py_wait_ge(py::array buf, py::handle off, py::handle target, py::object timeout_s) {
    uint32_t* w = word(buf, off, false);
    const uint32_t tgt = static_cast<uint32_t>(to_u64(target, "target", 0xFFFFFFFFu));
    double timeout = INFINITY;
    if (!timeout_s.is_none()) {
        timeout = PyFloat_AsDouble(timeout_s.ptr());
        if (timeout == -1.0 && PyErr_Occurred()) throw py::error_already_set();
        if (std::isnan(timeout) || timeout < 0) value_error("timeout_s must be >= 0 or None, got ", timeout);
    }
    if (__atomic_load_n(w, __ATOMIC_ACQUIRE) >= tgt) return true;

    py::gil_scoped_release nogil;
    const auto t0 = Clock::now();
    // A short spin (a few microseconds) catches a peer that is just about to post.
    for (int i = 0; i < 2000; ++i) {
        if (__atomic_load_n(w, __ATOMIC_ACQUIRE) >= tgt) return true;
        cpu_relax();
        if ((i & 63) == 63 && Clock::now() - t0 > std::chrono::microseconds(5)) break;
    }
    const bool forever = std::isinf(timeout);
    const auto deadline = forever ? Clock::time_point::max()
                                  : t0 + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(std::min(timeout, 1e9)));
    // Sleep in slices: a store that bypasses futex_wake is still seen, and Ctrl-C is honoured.
    constexpr int64_t kSliceNs = 50 * 1000 * 1000;
    auto next_signal_check = t0 + std::chrono::milliseconds(200);
    for (;;) {
        const uint32_t v = __atomic_load_n(w, __ATOMIC_ACQUIRE);
        if (v >= tgt) return true;
        const auto now = Clock::now();
        if (now >= deadline) return false;
        if (now >= next_signal_check) {
            py::gil_scoped_acquire gil;
            if (PyErr_CheckSignals() != 0) throw py::error_already_set();
            next_signal_check = now + std::chrono::milliseconds(200);
        }
        int64_t ns = kSliceNs;
        if (!forever)
            ns = std::min<int64_t>(ns, std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count());
        futex_wait(w, v, std::max<int64_t>(ns, 1000));
    }
}

void py_copy_bytes(py::array dst, py::array src, py::handle dst_offset) {
    require(dst, "dst", DT::U8, -1, true);
    require(src, "src", DT::U8, -1);
    const uint64_t off = to_u64(dst_offset, "dst_offset");
    const uint64_t n = nbytes(src), cap = nbytes(dst);
    if (off > cap || n > cap - off)
        value_error("copy of ", n, " bytes at dst_offset ", off, " exceeds dst of ", cap, " bytes");
    uint8_t* d = mdata<uint8_t>(dst) + off;
    const uint8_t* s = cdata<uint8_t>(src);
    if (n == 0) return;
    py::gil_scoped_release nogil;
    std::memmove(d, s, n);
}

}  // namespace

void register_sync(py::module_& m) {
    m.def("atomic_load_u32", &py_atomic_load, py::arg("buf"), py::arg("offset"),
          R"(atomic_load_u32(buf, offset) -> int

Sequentially consistent load of the u32 word at byte ``offset`` of ``buf`` (uint8, C-contiguous,
e.g. a view of shared memory). offset: a multiple of 4 with offset + 4 <= buf.nbytes.)");
    m.def("atomic_store_u32", &py_atomic_store, py::arg("buf"), py::arg("offset"), py::arg("value"),
          R"(atomic_store_u32(buf, offset, value) -> None

Sequentially consistent store of u32 ``value``; wakes futex waiters on the word. buf: writeable
uint8, C-contiguous; offset: a multiple of 4 inside buf.)");
    m.def("atomic_add_u32", &py_atomic_add, py::arg("buf"), py::arg("offset"), py::arg("value"),
          py::arg("wake") = true,
          R"(atomic_add_u32(buf, offset, value, wake=True) -> int

Atomic fetch-add (mod 2**32) of u32 ``value``; returns the new value and, with ``wake``, wakes every
futex waiter on the word (across processes). ``wake=False`` is for callers that know no waiter's
target is reached yet (each wake costs the waiters a context switch; they call futex_wake when it
is). buf: writeable uint8, C-contiguous; offset: a multiple of 4.)");
    m.def("wait_u32_ge", &py_wait_ge, py::arg("buf"), py::arg("offset"), py::arg("target"), py::arg("timeout_s"),
          R"(wait_u32_ge(buf, offset, target, timeout_s) -> bool

Wait until the u32 word at ``offset`` is >= ``target`` (plain comparison, no wrap-around
handling): True when it is, False when ``timeout_s`` seconds (float >= 0, or None for no limit)
pass first. Spins a few microseconds, then sleeps on a shared (non-private) Linux futex with the
GIL released, so it works across processes sharing a MAP_SHARED mapping. Wakes at least every
50 ms to re-check, and raises KeyboardInterrupt (etc.) if a signal handler fails meanwhile.)");
    m.def("futex_wake", &py_futex_wake, py::arg("buf"), py::arg("offset"),
          R"(futex_wake(buf, offset) -> int

Wake every waiter on the u32 word at ``offset`` of ``buf``; returns how many were woken.)");
    m.def("copy_bytes", &py_copy_bytes, py::arg("dst"), py::arg("src"), py::arg("dst_offset") = 0,
          R"(copy_bytes(dst, src, dst_offset=0) -> None

dst[dst_offset : dst_offset + src.nbytes] = src, bounds-checked, with the GIL released.
dst: writeable uint8, C-contiguous (any shape, addressed as flat bytes); src: uint8, C-contiguous.
Overlapping ranges are allowed (memmove).)");
}

}  // namespace mw
