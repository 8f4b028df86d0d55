// Shared-memory synchronisation on u32 words of a uint8 array that maps shared memory: atomics and
// Linux futex wait/wake (non-private, so it works across processes that map the same file), plus a
// bounds-checked copy.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <cmath>
#include <thread>

#include "sync.hpp"
#include "views.hpp"

#if defined(__linux__)
#include <time.h>
#endif

namespace mw {
namespace {

using Clock = std::chrono::steady_clock;

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

// A timeout argument: seconds >= 0, or None for no limit (INFINITY).
double timeout_arg(py::handle timeout_s) {
    if (timeout_s.is_none()) return INFINITY;
    const double timeout = PyFloat_AsDouble(timeout_s.ptr());
    if (timeout == -1.0 && PyErr_Occurred()) throw py::error_already_set();
    if (std::isnan(timeout) || timeout < 0) value_error("timeout_s must be >= 0 or None, got ", timeout);
    return timeout;
}

// Wait until *w >= tgt (true) or ``timeout`` seconds pass (false). Call with the GIL held: it is
// released while sleeping and taken back briefly to honour signals.
bool wait_word_ge(const uint32_t* w, uint32_t tgt, double timeout) {
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
        futex_wait(const_cast<uint32_t*>(w), v, std::max<int64_t>(ns, 1000));
    }
}

bool py_wait_ge(py::array buf, py::handle off, py::handle target, py::object timeout_s) {
    uint32_t* w = word(buf, off, false);
    const uint32_t tgt = static_cast<uint32_t>(to_u64(target, "target", 0xFFFFFFFFu));
    return wait_word_ge(w, tgt, timeout_arg(timeout_s));
}

// ---- barrier-free node rounds (multiwrite.group.Group.round_*) ---------------------------------
// One call per step of a small collective: on a host with more ranks than cores every Python line
// of a rank's part costs the other ranks CPU time, so the steps that touch only shared memory are
// done here. The layout (offsets) stays in Python; every offset is checked here.

uint32_t u32_arg(py::handle h, const char* name) { return static_cast<uint32_t>(to_u64(h, name, 0xFFFFFFFFu)); }

void py_round_arrive(py::array ctrl, py::handle count_offset, py::handle count, py::handle start, py::handle end) {
    round_count(word(ctrl, count_offset, true), u32_arg(count, "count"), u32_arg(start, "start"), u32_arg(end, "end"));
}

// Publish the collective a rank enters (see Group.announce): ``announce`` = (announce_offset, seq,
// signature (<= 7 ints), slot_offset): at announce_offset of ctrl the int64 seq then the signature,
// written seqlock-style (seq -1 while the signature is written); the signature, zero-padded to 8
// int64, also into the 64-byte slot at slot_offset.
void announce(py::array& ctrl, py::handle args) {
    py::tuple a = py::reinterpret_borrow<py::object>(args).cast<py::tuple>();
    if (a.size() != 4) value_error("announce must be (announce_offset, seq, signature, slot_offset)");
    py::sequence signature = a[2].cast<py::sequence>();
    const size_t k = py::len(signature);
    if (k > 7) value_error("signature has ", k, " values, at most 7 fit");
    int64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < k; ++i) words[i] = to_i64(signature[i], "signature value");
    const int64_t s = to_i64(a[1], "seq", 0);
    uint8_t* ann = byte_span(ctrl, "ctrl", to_u64(a[0], "announce_offset"), 64, true);
    uint8_t* slot = byte_span(ctrl, "ctrl", to_u64(a[3], "slot_offset"), 64, true);
    if (reinterpret_cast<uintptr_t>(ann) % 8 != 0) value_error("announce_offset is not 8-byte aligned in memory");
    int64_t* seq_word = reinterpret_cast<int64_t*>(ann);
    __atomic_store_n(seq_word, int64_t(-1), __ATOMIC_SEQ_CST);
    std::memcpy(ann + 8, words, 56);
    __atomic_store_n(seq_word, s, __ATOMIC_SEQ_CST);
    std::memcpy(slot, words, 64);
}

uint32_t py_round_put(py::array ctrl, py::array staging, py::handle src, py::handle dst_offset, py::handle own_offset,
                      py::handle own_wake_value, py::handle count_offset, py::handle start, py::handle end,
                      py::object announce_args) {
    const ByteBuffer in = buffer_arg(src, "src", false);
    const uint64_t n = in.size;
    uint8_t* dst = byte_span(staging, "staging", to_u64(dst_offset, "dst_offset"), n, true);
    uint32_t* own = word(ctrl, own_offset, true);
    uint32_t* counter = word(ctrl, count_offset, true);
    const int64_t wake_at = to_i64(own_wake_value, "own_wake_value", -1, 0xFFFFFFFFll);
    const uint32_t s = u32_arg(start, "start"), e = u32_arg(end, "end");
    if (!announce_args.is_none()) announce(ctrl, announce_args);
    if (n) std::memcpy(dst, in.data, n);
    // The own chunk is counted on its word first: a rank waiting for the node's own chunks
    // (round_wait_first) is woken by the one that completes them, the others sleep on.
    const uint32_t owned = __atomic_add_fetch(own, 1u, __ATOMIC_SEQ_CST);
    if (wake_at >= 0 && owned == static_cast<uint32_t>(wake_at)) futex_wake_all(own);
    round_count(counter, 1, s, e);
    return owned;
}

// Status of round_collect.
enum RoundStatus { kRoundDone = 0, kRoundWaiting = 1, kRoundFailed = 2, kRoundMismatch = 3 };

int py_round_collect(py::array ctrl, py::handle count_offset, py::handle target, py::object timeout_s,
                     py::handle error_offset, py::handle number, py::handle signature_offset,
                     py::handle signature_bytes, py::handle local_size, py::object staging, py::object out,
                     py::object arrive) {
    uint32_t* counter = word(ctrl, count_offset, !arrive.is_none());
    const uint32_t* failed = word(ctrl, error_offset, false);
    const uint32_t tgt = u32_arg(target, "target"), num = u32_arg(number, "number");
    const uint64_t sig_bytes = to_u64(signature_bytes, "signature_bytes", 64);
    const uint64_t L = to_u64(local_size, "local_size", 64);
    const uint8_t* sigs = signature_slots(ctrl, to_u64(signature_offset, "signature_offset"), sig_bytes, L);
    const uint8_t* from = nullptr;
    uint8_t* to = nullptr;
    uint64_t n = 0;
    py::array staging_arr;
    if (!out.is_none()) {
        const ByteBuffer o = buffer_arg(out, "out", true);
        staging_arr = py::array::ensure(staging);
        if (!staging_arr) value_error("staging must be a NumPy array");
        n = o.size;
        to = o.data;
        from = byte_span(staging_arr, "staging", 0, n, false);
    }
    const double timeout = timeout_arg(timeout_s);
    if (!arrive.is_none()) {
        // The caller landed the last chunks itself: copy out before the arrival wakes the node's
        // ranks (which then take the CPU on a host with more ranks than cores).
        py::tuple a = arrive.cast<py::tuple>();
        if (a.size() != 2) value_error("arrive must be (count, start)");
        const uint32_t count = u32_arg(a[0], "arrive count"), start = u32_arg(a[1], "arrive start");
        if (n) std::memcpy(to, from, n);
        n = 0;
        round_count(counter, count, start, tgt);
    }
    if (!wait_word_ge(counter, tgt, timeout)) return kRoundWaiting;
    if (__atomic_load_n(failed, __ATOMIC_ACQUIRE) == num) return kRoundFailed;
    if (!signatures_agree(sigs, sig_bytes, L)) return kRoundMismatch;
    if (n) std::memcpy(to, from, n);
    return kRoundDone;
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
    m.def("round_arrive", &py_round_arrive, py::arg("ctrl"), py::arg("count_offset"), py::arg("count"),
          py::arg("start"), py::arg("end"),
          R"(round_arrive(ctrl, count_offset, count, start, end) -> None

Add ``count`` to the u32 round counter at ``count_offset`` of ``ctrl`` (uint8 shared memory); wake
its waiters only if this addition completes the round, i.e. moves the counter (relative to
``start``, mod 2**32) from below ``end - start`` to at least it.)");
    m.def("round_put", &py_round_put, py::arg("ctrl"), py::arg("staging"), py::arg("src"), py::arg("dst_offset"),
          py::arg("own_offset"), py::arg("own_wake_value"), py::arg("count_offset"), py::arg("start"), py::arg("end"),
          py::arg("announce") = py::none(),
          R"(round_put(ctrl, staging, src, dst_offset, own_offset, own_wake_value, count_offset, start, end,
          announce=None) -> int

A rank's own chunk of a round. First, with ``announce`` = (announce_offset, seq, signature,
slot_offset), publish the call: at announce_offset of ``ctrl`` the int64 ``seq`` (>= 0) then the
signature (at most 7 ints, zero-padded), written seqlock-style (seq -1 while the signature is
written), and the signature (zero-padded to 8 int64) into the 64-byte slot at slot_offset. Then
staging[dst_offset : dst_offset + n] = the n bytes of src (a uint8 array, or an unconsumed DLPack
capsule of a C-contiguous CPU tensor; bounds-checked), then +1 on the own-chunk word at
``own_offset`` of ``ctrl`` (its waiters woken when it becomes ``own_wake_value``; -1: never), then
round_arrive(ctrl, count_offset, 1, start, end).
Returns the own-chunk word's new value (so the rank that completes the node's chunks knows it).)");
    m.def("round_collect", &py_round_collect, py::arg("ctrl"), py::arg("count_offset"), py::arg("target"),
          py::arg("timeout_s"), py::arg("error_offset"), py::arg("number"), py::arg("signature_offset"),
          py::arg("signature_bytes"), py::arg("local_size"), py::arg("staging") = py::none(),
          py::arg("out") = py::none(), py::arg("arrive") = py::none(),
          R"(round_collect(ctrl, count_offset, target, timeout_s, error_offset, number, signature_offset,
              signature_bytes, local_size, staging=None, out=None, arrive=None) -> int

Wait (as wait_u32_ge, at most ``timeout_s``) until the round counter reaches ``target``, then check
the round: returns 1 if it did not in time, 2 if the u32 at ``error_offset`` equals ``number`` (a
relay recorded a failure), 3 if the first ``signature_bytes`` of the ``local_size`` 64-byte
signature slots from ``signature_offset`` differ, else copies staging's first bytes into ``out``
(a writeable uint8 array, or an unconsumed DLPack capsule of a C-contiguous CPU tensor) when it is
given and returns 0. With ``arrive`` = (count, start), the
caller landed the round's last chunks itself: out is copied first (whatever the checks find), then
round_arrive(ctrl, count_offset, count, start, target), then the wait and the checks.)");
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
