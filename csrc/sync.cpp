// Shared-memory synchronisation on u32 words of a uint8 array that maps shared memory: atomics and
// Linux futex wait/wake (non-private, so it works across processes that map the same file), plus a
// bounds-checked copy.
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
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
// done here. The words live in the node control segment (NodeControl, sync.hpp), addressed by the
// round's parity.

uint32_t u32_arg(py::handle h, const char* name) { return static_cast<uint32_t>(to_u64(h, name, 0xFFFFFFFFu)); }

void py_round_arrive(py::array ctrl, py::handle parity, py::handle count, py::handle start, py::handle end) {
    NodeControl* c = node_control(ctrl, true);
    round_count(&c->round_count[parity_arg(parity)].value, u32_arg(count, "count"), u32_arg(start, "start"),
                u32_arg(end, "end"));
}

// Publish the collective a rank enters (see Group.announce): ``announce`` = (local_rank, seq,
// signature (<= 7 ints)): the rank's announcement slot gets the int64 seq then the signature, written
// seqlock-style (seq -1 while the signature is written); the signature, zero-padded to 8 int64, also
// goes into the rank's signature slot of the round.
void announce(NodeControl* c, int parity, py::handle args) {
    py::tuple a = py::reinterpret_borrow<py::object>(args).cast<py::tuple>();
    if (a.size() != 3) value_error("announce must be (local_rank, seq, signature)");
    const uint64_t me = to_u64(a[0], "local_rank", MAX_LOCAL_RANKS - 1);
    py::sequence signature = a[2].cast<py::sequence>();
    const size_t k = py::len(signature);
    if (k > 7) value_error("signature has ", k, " values, at most 7 fit");
    int64_t words[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t i = 0; i < k; ++i) words[i] = to_i64(signature[i], "signature value");
    const int64_t s = to_i64(a[1], "seq", 0);
    Slot& ann = c->announce[me];
    __atomic_store_n(&ann.words[0], int64_t(-1), __ATOMIC_SEQ_CST);
    std::memcpy(&ann.words[1], words, 56);
    __atomic_store_n(&ann.words[0], s, __ATOMIC_SEQ_CST);
    std::memcpy(c->round_signature[parity][me].words, words, 64);
}

uint32_t py_round_put(py::array ctrl, py::array staging, py::handle src, py::handle dst_offset, py::handle parity,
                      py::handle own_wake_value, py::handle start, py::handle end, py::object announce_args) {
    const ByteBuffer in = buffer_arg(src, "src", false);
    const uint64_t n = in.size;
    uint8_t* dst = byte_span(staging, "staging", to_u64(dst_offset, "dst_offset"), n, true);
    NodeControl* c = node_control(ctrl, true);
    const int par = parity_arg(parity);
    uint32_t* own = &c->round_own[par].value;
    const int64_t wake_at = to_i64(own_wake_value, "own_wake_value", -1, 0xFFFFFFFFll);
    const uint32_t s = u32_arg(start, "start"), e = u32_arg(end, "end");
    if (!announce_args.is_none()) announce(c, par, announce_args);
    if (n) std::memcpy(dst, in.data, n);
    // The own chunk is counted on its word first: a rank waiting for the node's own chunks
    // (round_wait_first) is woken by the one that completes them, the others sleep on.
    const uint32_t owned = __atomic_add_fetch(own, 1u, __ATOMIC_SEQ_CST);
    if (wake_at >= 0 && owned == static_cast<uint32_t>(wake_at)) futex_wake_all(own);
    round_count(&c->round_count[par].value, 1, s, e);
    return owned;
}

// Status of round_collect.
enum RoundStatus { kRoundDone = 0, kRoundWaiting = 1, kRoundFailed = 2, kRoundMismatch = 3 };

int py_round_collect(py::array ctrl, py::handle parity, py::handle target, py::object timeout_s, py::handle number,
                     py::handle signature_bytes, py::handle local_size, py::object staging, py::object out,
                     py::object arrive) {
    NodeControl* c = node_control(ctrl, !arrive.is_none());
    const int par = parity_arg(parity);
    uint32_t* counter = &c->round_count[par].value;
    const uint32_t* failed = &c->round_error[par].value;
    const uint32_t tgt = u32_arg(target, "target"), num = u32_arg(number, "number");
    const uint64_t sig_bytes = to_u64(signature_bytes, "signature_bytes", 64);
    const uint64_t L = to_u64(local_size, "local_size", 64);
    const uint8_t* sigs = round_signatures(ctrl, par, sig_bytes, L);
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
    py::dict layout;
    layout["size"] = sizeof(NodeControl);
    layout["line"] = sizeof(Line);
    layout["slot"] = sizeof(Slot);
    layout["barrier"] = offsetof(NodeControl, barrier);
    layout["grow_name"] = offsetof(NodeControl, grow_name);
    layout["grow_name_len"] = sizeof(NodeControl::grow_name);
    layout["epoch"] = offsetof(NodeControl, epoch);
    layout["sync"] = offsetof(NodeControl, sync);
    layout["round_count"] = offsetof(NodeControl, round_count);
    layout["round_error"] = offsetof(NodeControl, round_error);
    layout["round_message"] = offsetof(NodeControl, round_message);
    layout["round_message_len"] = sizeof(NodeControl::round_message[0]);
    layout["round_own"] = offsetof(NodeControl, round_own);
    layout["round_signature"] = offsetof(NodeControl, round_signature);
    layout["announce"] = offsetof(NodeControl, announce);
    m.attr("NODE_CONTROL") = layout;

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
    m.def("round_arrive", &py_round_arrive, py::arg("ctrl"), py::arg("parity"), py::arg("count"),
          py::arg("start"), py::arg("end"),
          R"(round_arrive(ctrl, parity, count, start, end) -> None

Add ``count`` to the round counter of round parity ``parity`` (0 or 1) in the node control segment
``ctrl`` (uint8 shared memory, NODE_CONTROL["size"] bytes); wake its waiters only if this addition
completes the round, i.e. moves the counter (relative to ``start``, mod 2**32) from below
``end - start`` to at least it.)");
    m.def("round_put", &py_round_put, py::arg("ctrl"), py::arg("staging"), py::arg("src"), py::arg("dst_offset"),
          py::arg("parity"), py::arg("own_wake_value"), py::arg("start"), py::arg("end"),
          py::arg("announce") = py::none(),
          R"(round_put(ctrl, staging, src, dst_offset, parity, own_wake_value, start, end, announce=None) -> int

A rank's own chunk of a round of parity ``parity`` in the node control segment ``ctrl``. First, with
``announce`` = (local_rank, seq, signature), publish the call: the rank's announcement slot gets the
int64 ``seq`` (>= 0) then the signature (at most 7 ints, zero-padded), written seqlock-style (seq -1
while the signature is written), and the signature (zero-padded to 8 int64) goes into the rank's
signature slot of the round. Then staging[dst_offset : dst_offset + n] = the n bytes of src (a
uint8 array, or an unconsumed DLPack capsule of a C-contiguous CPU tensor; bounds-checked), then +1
on the round's own-chunk word (its waiters woken when it becomes ``own_wake_value``; -1: never),
then round_arrive(ctrl, parity, 1, start, end).
Returns the own-chunk word's new value (so the rank that completes the node's chunks knows it).)");
    m.def("round_collect", &py_round_collect, py::arg("ctrl"), py::arg("parity"), py::arg("target"),
          py::arg("timeout_s"), py::arg("number"), py::arg("signature_bytes"), py::arg("local_size"),
          py::arg("staging") = py::none(), py::arg("out") = py::none(), py::arg("arrive") = py::none(),
          R"(round_collect(ctrl, parity, target, timeout_s, number, signature_bytes, local_size, staging=None,
              out=None, arrive=None) -> int

Wait (as wait_u32_ge, at most ``timeout_s``) until the round counter of parity ``parity`` reaches
``target``, then check the round: returns 1 if it did not in time, 2 if the round's error word equals
``number`` (a relay recorded a failure), 3 if the first ``signature_bytes`` of the ``local_size``
signature slots of the round differ, else copies staging's first bytes into ``out`` (a writeable
uint8 array, or an unconsumed DLPack capsule of a C-contiguous CPU tensor) when it is given and
returns 0. With ``arrive`` = (count, start), the caller landed the round's last chunks itself: out is
copied first (whatever the checks find), then round_arrive(ctrl, parity, count, start, target), then
the wait and the checks.)");
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
