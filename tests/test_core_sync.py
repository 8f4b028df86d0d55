"""multiwrite._core shared-memory sync: atomics, futex wait/wake across processes, timeouts, bounds
checks, and copy_bytes."""
import contextlib
import mmap
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

from multiwrite import _core as c

pytestmark = pytest.mark.timeout(60)


def test_atomics_basic_and_wraparound():
    buf = np.zeros(16, np.uint8)
    assert c.atomic_load_u32(buf, 4) == 0
    c.atomic_store_u32(buf, 4, 2**32 - 2)
    assert c.atomic_add_u32(buf, 4, 1) == 2**32 - 1
    assert c.atomic_add_u32(buf, 4, 3) == 2                       # mod 2**32
    assert c.atomic_load_u32(buf, 4) == 2
    assert buf[4:8].view(np.uint32)[0] == 2 and buf[:4].sum() == 0 and buf[8:].sum() == 0
    assert c.futex_wake(buf, 4) == 0                               # nobody waiting


def test_wait_returns_true_at_once_and_false_on_timeout():
    buf = np.zeros(8, np.uint8)
    c.atomic_store_u32(buf, 0, 5)
    assert c.wait_u32_ge(buf, 0, 5, 0.0)
    assert c.wait_u32_ge(buf, 0, 0, 0.0)
    t0 = time.monotonic()
    assert c.wait_u32_ge(buf, 0, 6, 0.3) is False
    elapsed = time.monotonic() - t0
    assert 0.3 <= elapsed < 2.0
    assert c.wait_u32_ge(buf, 0, 6, 0.0) is False


@pytest.mark.parametrize("call", [
    lambda b, o: c.atomic_load_u32(b, o),
    lambda b, o: c.atomic_store_u32(b, o, 1),
    lambda b, o: c.atomic_add_u32(b, o, 1),
    lambda b, o: c.wait_u32_ge(b, o, 1, 0.0),
    lambda b, o: c.futex_wake(b, o),
])
def test_word_bounds_and_alignment(call):
    buf = np.zeros(16, np.uint8)
    with pytest.raises(ValueError, match="offset 2 is not a multiple of 4"):
        call(buf, 2)
    with pytest.raises(ValueError, match=r"offset 16 \+ 4 exceeds the buffer of 16 bytes"):
        call(buf, 16)
    with pytest.raises(ValueError, match="offset must be >= 0, got -4"):
        call(buf, -4)
    with pytest.raises(ValueError, match=r"offset 0 \+ 4 exceeds the buffer of 3 bytes"):
        call(buf[:3], 0)
    with pytest.raises(ValueError, match="word at offset 0 is not 4-byte aligned in memory"):
        call(np.zeros(32, np.uint8)[1:17], 0)
    with pytest.raises(ValueError, match="buf must have dtype uint8, got uint32"):
        call(buf.view(np.uint32), 0)


def test_value_and_timeout_errors():
    buf = np.zeros(8, np.uint8)
    with pytest.raises(ValueError, match=r"value = 4294967296 out of range \[0, 4294967295\]"):
        c.atomic_add_u32(buf, 0, 2**32)
    with pytest.raises(ValueError, match="value must be >= 0, got -1"):
        c.atomic_store_u32(buf, 0, -1)
    with pytest.raises(ValueError, match="target = 4294967296 out of range"):
        c.wait_u32_ge(buf, 0, 2**32, 0.1)
    with pytest.raises(ValueError, match="timeout_s must be >= 0 or None, got -1"):
        c.wait_u32_ge(buf, 0, 1, -1.0)
    ro = np.zeros(8, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="buf must be writeable"):
        c.atomic_add_u32(ro, 0, 1)
    with pytest.raises(ValueError, match="buf must be writeable"):
        c.atomic_store_u32(ro, 0, 1)
    assert c.atomic_load_u32(ro, 0) == 0                           # loads need no write access


def _forked_waiter(shared, timeout, target=1):
    buf = np.frombuffer(shared, dtype=np.uint8)
    ok = c.wait_u32_ge(buf, 0, target, timeout)                    # sleeps on the futex
    c.atomic_store_u32(buf, 8, 2 if ok else 3)
    c.atomic_add_u32(buf, 4, 1)                                    # wakes the parent
    os._exit(0)


@contextlib.contextmanager
def _waiter_child(target=1):
    """A forked child sleeping until word 0 >= target (20 s limit); yields the shared buffer, then
    checks the child exited cleanly. Word 8: 2 = woken in time, 3 = timed out; word 4: child done."""
    shared = mmap.mmap(-1, 4096)                                   # MAP_SHARED | MAP_ANONYMOUS
    buf = np.frombuffer(shared, dtype=np.uint8)
    proc = mp.get_context("fork").Process(target=_forked_waiter, args=(shared, 20.0, target))
    proc.start()
    try:
        time.sleep(0.3)                                            # let the child go to sleep
        yield buf
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0


def test_add_without_wake_then_futex_wake_across_processes():
    # wake=False: the count moves but waiters are woken only by the explicit futex_wake
    with _waiter_child(target=2) as buf:
        assert c.atomic_add_u32(buf, 0, 1, False) == 1            # below the waiter's target
        assert c.atomic_add_u32(buf, 0, 1, wake=False) == 2        # reaches it, nobody woken yet
        assert c.atomic_load_u32(buf, 8) == 0
        c.futex_wake(buf, 0)
        assert c.wait_u32_ge(buf, 4, 1, 20.0)
        assert c.atomic_load_u32(buf, 8) == 2


def test_futex_wait_wake_across_forked_processes():
    with _waiter_child() as buf:
        assert c.atomic_load_u32(buf, 4) == 0
        t0 = time.monotonic()
        c.atomic_add_u32(buf, 0, 1)
        assert c.wait_u32_ge(buf, 4, 1, 20.0)
        assert time.monotonic() - t0 < 5.0                         # woken, not timed out
        assert c.atomic_load_u32(buf, 8) == 2


def test_futex_timeout_in_child_process():
    shared = mmap.mmap(-1, 4096)
    buf = np.frombuffer(shared, dtype=np.uint8)
    proc = mp.get_context("fork").Process(target=_forked_waiter, args=(shared, 0.2))
    proc.start()
    assert c.wait_u32_ge(buf, 4, 1, 20.0)
    proc.join(10)
    assert c.atomic_load_u32(buf, 8) == 3                          # the child timed out


_CHILD = textwrap.dedent("""
    import importlib.util, mmap, sys
    import numpy as np
    spec = importlib.util.spec_from_file_location("_core", sys.argv[1])
    c = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(c)
    with open(sys.argv[2], "r+b") as f:
        m = mmap.mmap(f.fileno(), 4096)
    buf = np.frombuffer(m, dtype=np.uint8)
    c.atomic_add_u32(buf, 4, 1)                      # "ready"
    ok = c.wait_u32_ge(buf, 0, 7, 20.0)
    c.atomic_store_u32(buf, 8, 1 if ok else 2)
    c.atomic_add_u32(buf, 4, 1)
""")


def test_futex_across_unrelated_processes_mapping_one_file():
    """Two interpreters map the same file at different addresses: the futex must be shared."""
    fd, path = tempfile.mkstemp(prefix="mw-core-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        os.ftruncate(fd, 4096)
        m = mmap.mmap(fd, 4096)
        buf = np.frombuffer(m, dtype=np.uint8)
        child = subprocess.Popen([sys.executable, "-c", _CHILD, c.__file__, path])
        try:
            assert c.wait_u32_ge(buf, 4, 1, 30.0), "child did not start"
            time.sleep(0.2)
            t0 = time.monotonic()
            c.atomic_store_u32(buf, 0, 7)                          # a store wakes waiters too
            assert c.wait_u32_ge(buf, 4, 2, 20.0)
            assert time.monotonic() - t0 < 5.0
            assert c.atomic_load_u32(buf, 8) == 1
            assert child.wait(20) == 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        del buf
        m.close()
    finally:
        os.close(fd)
        os.unlink(path)


def test_copy_bytes():
    dst = np.zeros(16, np.uint8)
    c.copy_bytes(dst, np.arange(4, dtype=np.uint8), 10)
    assert dst.tolist() == [0] * 10 + [0, 1, 2, 3] + [0, 0]
    c.copy_bytes(dst, np.full(16, 9, np.uint8))
    assert (dst == 9).all()
    c.copy_bytes(dst, np.zeros(0, np.uint8), 16)                   # empty copy at the end is fine
    big = np.arange(1 << 18, dtype=np.uint32).view(np.uint8)
    out = np.empty((2, 1 << 21), np.uint8)
    c.copy_bytes(out, big, 1 << 20)
    assert out.reshape(-1)[1 << 20:(1 << 20) + big.size].tobytes() == big.tobytes()
    with pytest.raises(ValueError, match=r"copy of 4 bytes at dst_offset 13 exceeds dst of 16 bytes"):
        c.copy_bytes(dst, np.zeros(4, np.uint8), 13)
    with pytest.raises(ValueError, match=r"copy of 0 bytes at dst_offset 17 exceeds dst of 16 bytes"):
        c.copy_bytes(dst, np.zeros(0, np.uint8), 17)
    with pytest.raises(ValueError, match="dst_offset must be >= 0, got -1"):
        c.copy_bytes(dst, np.zeros(4, np.uint8), -1)
    with pytest.raises(ValueError, match="src must have dtype uint8, got float32"):
        c.copy_bytes(dst, np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="dst must be C-contiguous"):
        c.copy_bytes(np.zeros(32, np.uint8)[::2], np.zeros(1, np.uint8))
    ro = dst.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dst must be writeable"):
        c.copy_bytes(ro, np.zeros(1, np.uint8))


def test_wait_releases_the_gil():
    import threading
    buf = np.zeros(8, np.uint8)
    t = threading.Thread(target=lambda: (time.sleep(0.2), c.atomic_add_u32(buf, 0, 1)))
    t0 = time.monotonic()
    t.start()
    assert c.wait_u32_ge(buf, 0, 1, 10.0)                          # the thread could run: GIL released
    assert time.monotonic() - t0 < 5.0
    t.join()


def test_sweep_stale_removes_only_old_segments_of_dead_creators():
    """A leader killed between creating and unlinking a segment leaves it in /dev/shm; the next group
    on the node removes it once its creator is gone and it is older than the group's timeouts."""
    from multiwrite.runtime import shm

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, alive = child.pid, os.getpid()
    tag = os.urandom(4).hex()
    names = {key: f"{shm.NAME_PREFIX}{pid}-sweeptest{tag}{key}" for key, pid in
             (("old_dead", dead), ("new_dead", dead), ("old_alive", alive))}
    old = time.time() - 3600
    for key, name in names.items():
        path = os.path.join(shm.SHM_DIR, name)
        with open(path, "wb") as f:
            f.write(b"x")
        if key.startswith("old"):
            os.utime(path, (old, old))
    try:
        removed = shm.sweep_stale(600)
        assert names["old_dead"] in removed
        assert not os.path.exists(os.path.join(shm.SHM_DIR, names["old_dead"]))
        for key in ("new_dead", "old_alive"):
            assert names[key] not in removed and os.path.exists(os.path.join(shm.SHM_DIR, names[key])), key
    finally:
        for name in names.values():
            shm.Segment.unlink(name)


NC = c.NODE_CONTROL


def _ctrl():
    """A zeroed node control segment, 64-byte aligned like a shared mapping."""
    raw = np.zeros(NC["size"] + 64, np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start:start + NC["size"]]


def _word(ctrl, field, parity=0):
    return c.atomic_load_u32(ctrl, NC[field] + NC["line"] * parity)


def _slot(ctrl, field, i, parity=None):
    base = NC[field] + (NC["slot"] * c.MAX_LOCAL_RANKS * parity if parity is not None else 0) + NC["slot"] * i
    return ctrl[base:base + NC["slot"]].view(np.int64).tolist()


def test_node_control_layout():
    """The node control segment's layout comes from the C++ core: named fields, words on cache lines
    of their own, slots of 64 bytes, nothing overlapping, in the order of the struct."""
    assert NC["line"] == 64 and NC["slot"] == 64 and NC["size"] % 64 == 0
    L = c.MAX_LOCAL_RANKS
    spans = [("barrier", 64), ("grow_name", NC["grow_name_len"]), ("epoch", 4 * L), ("sync", 2 * 64 * L),
             ("round_count", 128), ("round_error", 128), ("round_message", 2 * NC["round_message_len"]),
             ("round_own", 128), ("round_signature", 2 * 64 * L), ("announce", 64 * L)]
    end = 0
    for field, size in spans:
        assert NC[field] >= end, (field, NC[field], end)
        end = NC[field] + size
    assert end <= NC["size"]
    for field in ("round_count", "round_error", "round_own", "round_signature", "announce", "sync"):
        assert NC[field] % 64 == 0, field


def test_round_put_announces_copies_and_counts():
    """round_put: the announcement (seq then a zero-padded signature, and the signature slot of the
    round's parity), the copy into the staging area, the own-chunk count (returned) and the round count;
    bounds are checked before anything is written."""
    ctrl, staging = _ctrl(), np.zeros(64, np.uint8)
    src = np.arange(8, dtype=np.uint8) + 1
    own = c.round_put(ctrl, staging, src, 16, 1, -1, 0, 3, (2, 7, (1, 2, 3)))
    assert own == 1 and _word(ctrl, "round_count", 1) == 1 and _word(ctrl, "round_own", 1) == 1
    assert _word(ctrl, "round_count", 0) == 0
    assert staging[16:24].tolist() == src.tolist() and staging[:16].sum() == 0 and staging[24:].sum() == 0
    assert _slot(ctrl, "announce", 2) == [7, 1, 2, 3, 0, 0, 0, 0]
    assert _slot(ctrl, "round_signature", 2, parity=1) == [1, 2, 3, 0, 0, 0, 0, 0]
    assert c.round_put(ctrl, staging, src, 0, 1, -1, 0, 3) == 2          # no announcement
    before = ctrl.copy(), staging.copy()
    for args, text in [((staging, src, 60, 0, -1, 0, 3), "exceed"),               # chunk past the staging area
                       ((staging, src, 0, 2, -1, 0, 3), "parity"),                # no such parity
                       ((staging, src, 0, 0, -1, 0, 3, (1, 7, tuple(range(8)))), "at most 7"),
                       ((staging, src, 0, 0, -1, 0, 3, (c.MAX_LOCAL_RANKS, 7, (1,))), "local_rank")]:
        with pytest.raises(ValueError, match=text):
            c.round_put(ctrl, *args)
        assert (ctrl == before[0]).all() and (staging == before[1]).all()
    with pytest.raises(ValueError, match="exceed"):                 # a ctrl smaller than the segment
        c.round_put(np.zeros(1024, np.uint8), staging, src, 0, 0, -1, 0, 3)


def test_round_collect_statuses():
    """round_collect: 1 while the count is short (after timeout_s), 2 for a recorded failure of this
    round, 3 when the local ranks' signatures differ, else 0 with out = staging[:out.nbytes]."""
    ctrl, staging = _ctrl(), np.arange(32, dtype=np.uint8)
    out = np.zeros(16, np.uint8)
    sig = dict(number=5, signature_bytes=16, local_size=2)
    assert c.round_collect(ctrl, 0, 2, 0.05, staging=staging, out=out, **sig) == 1 and out.sum() == 0
    c.round_arrive(ctrl, 0, 2, 0, 2)
    assert c.round_collect(ctrl, 0, 2, 0.0, staging=staging, out=out, **sig) == 0
    assert out.tolist() == list(range(16))
    rank1 = NC["round_signature"] + NC["slot"]
    ctrl[rank1 + 8] = 1                              # local rank 1's signature differs in word 1
    assert c.round_collect(ctrl, 0, 2, 0.0, **sig) == 3
    ctrl[rank1 + 8] = 0
    c.atomic_store_u32(ctrl, NC["round_error"], 5)   # round 5 failed on this node
    assert c.round_collect(ctrl, 0, 2, 0.0, **sig) == 2
    with pytest.raises(ValueError, match="exceed"):  # out larger than the staging area
        c.round_collect(ctrl, 0, 2, 0.0, staging=staging, out=np.zeros(64, np.uint8), **sig)


def test_round_collect_arrive_copies_then_counts():
    """round_collect(arrive=(count, start)): the caller landed the round's last chunks; out is copied,
    the count added (completing the round: no wait), then the usual checks. A short count still
    times out (status 1), and a bad arrive tuple is refused before anything is written."""
    ctrl, staging = _ctrl(), np.arange(32, dtype=np.uint8)
    out = np.zeros(16, np.uint8)
    sig = dict(number=5, signature_bytes=16, local_size=2)
    c.round_arrive(ctrl, 0, 1, 0, 3)                 # 1 of 3 chunks landed by a peer
    assert c.round_collect(ctrl, 0, 3, 1.0, staging=staging, out=out, arrive=(2, 0), **sig) == 0
    assert out.tolist() == list(range(16)) and _word(ctrl, "round_count") == 3
    out[:] = 0
    assert c.round_collect(ctrl, 0, 5, 0.05, staging=staging, out=out, arrive=(1, 3), **sig) == 1
    assert _word(ctrl, "round_count") == 4 and out.tolist() == list(range(16))   # copied, counted, short
    before = ctrl.copy()
    with pytest.raises(ValueError, match="arrive must be"):
        c.round_collect(ctrl, 0, 5, 0.0, staging=staging, out=out, arrive=(1,), **sig)
    with pytest.raises(ValueError, match="timeout_s"):
        c.round_collect(ctrl, 0, 5, -1.0, staging=staging, out=out, arrive=(1, 3), **sig)
    assert (ctrl == before).all()


def test_round_functions_take_dlpack_capsules():
    """round_put's src and round_collect's out may be unconsumed DLPack capsules of C-contiguous CPU
    tensors (the small all_gather passes its tensors so); other tensors are refused."""
    torch = pytest.importorskip("torch")
    from torch.utils.dlpack import from_dlpack, to_dlpack
    ctrl, staging = _ctrl(), np.zeros(64, np.uint8)
    x = torch.arange(4, dtype=torch.bfloat16) + 1
    cap = to_dlpack(x)
    assert c.round_put(ctrl, staging, cap, 8, 0, -1, 0, 1) == 1
    assert (staging[8:16] == x.view(torch.uint8).numpy()).all()
    assert from_dlpack(cap).shape == (4,)            # not consumed
    out = torch.zeros(4, dtype=torch.bfloat16)
    assert c.round_collect(ctrl, 0, 1, 0.0, 1, 8, 1, staging=staging[8:], out=to_dlpack(out)) == 0
    assert torch.equal(out, x)
    for bad, text in [(to_dlpack(torch.arange(12.0).reshape(3, 4).t()), "not C-contiguous"),
                      (np.zeros(4, np.float32), "dtype uint8"), (b"abcd", "dtype uint8")]:
        with pytest.raises(ValueError, match=text):
            c.round_put(ctrl, staging, bad, 0, 0, -1, 0, 1)
