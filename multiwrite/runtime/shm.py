"""Shared memory inside a node: POSIX segments in /dev/shm, mapped by every rank of the node.

The node leader creates a segment, the others map it, and the leader unlinks the name as soon as
everyone has it mapped: the memory lives exactly as long as the processes. A leader killed inside
that short window (SIGKILL, an abort) cannot unlink; the name carries the creator's pid, and the next
group created on the node removes such leftovers (``sweep_stale``).
"""
import mmap
import os
import secrets
import time

import numpy as np

from ..errors import MultiwriteError

SHM_DIR = "/dev/shm"
NAME_PREFIX = "multiwrite-"


def check_space(nbytes):
    """Raise a MultiwriteError that says what to do when SHM_DIR cannot hold ``nbytes`` more bytes.

    tmpfs accepts a segment larger than its free space (ftruncate succeeds) and the process dies of
    SIGBUS when it touches the missing pages, so the space is checked before creating. Containers
    often have a small /dev/shm (Docker: 64 MiB)."""
    try:
        st = os.statvfs(SHM_DIR)
    except OSError as e:
        raise MultiwriteError(f"no shared memory directory {SHM_DIR} ({e.strerror}): multiwrite needs POSIX "
                              f"shared memory (a tmpfs at {SHM_DIR}) for the ranks of a node") from None
    free = st.f_bavail * st.f_frsize
    if nbytes > free:
        raise MultiwriteError(
            f"{SHM_DIR} has {free / 2**20:.1f} MiB free, but this node needs a shared segment of "
            f"{nbytes / 2**20:.1f} MiB (windows and staging buffers of the node's ranks): enlarge it "
            f"(docker run --shm-size=4g, or mount -o remount,size=4G {SHM_DIR}) or free space in it")


class Segment:
    """One mapping of a node-shared segment; ``array`` is a writable uint8 view of all of it."""

    def __init__(self, name, nbytes, create):
        self.name, self.nbytes = name, nbytes
        path = os.path.join(SHM_DIR, name)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        if create:
            check_space(nbytes)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, nbytes)
            elif os.fstat(fd).st_size < nbytes:
                raise RuntimeError(f"shared segment {name} is smaller than {nbytes} bytes")
            self._map = mmap.mmap(fd, max(nbytes, 1))
        finally:
            os.close(fd)
        self.array = np.frombuffer(self._map, dtype=np.uint8, count=nbytes)

    @staticmethod
    def new_name():
        return f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"

    @staticmethod
    def unlink(name):
        try:
            os.unlink(os.path.join(SHM_DIR, name))
        except FileNotFoundError:
            pass

    def close(self):
        self.array = None
        m, self._map = getattr(self, "_map", None), None
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass  # a view is still alive somewhere; the mapping goes with the process


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, another user's
        return True
    return True


def sweep_stale(min_age_s):
    """Unlink our segments whose creator process is gone and that nobody has written for
    ``min_age_s`` seconds (a live creator's segment is unlinked within its group's timeouts; the age
    also spares a live job whose pids this process cannot see). Returns the names removed."""
    removed = []
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        pid = name[len(NAME_PREFIX):].split("-", 1)[0] if name.startswith(NAME_PREFIX) else ""
        if not pid.isdigit() or _alive(int(pid)):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            if now - os.stat(path).st_mtime >= min_age_s:
                os.unlink(path)
                removed.append(name)
        except OSError:
            pass
    return removed


def create_node_segments(transport, topo, sizes, before_barrier=None):
    """Collective over the whole group: one segment per entry of ``sizes`` on every node.

    Returns this rank's mappings. Uses a control allgather (the names) and a barrier (every rank has
    mapped them). ``before_barrier(mappings)`` runs on every rank before that barrier: what it sets up
    is in place on every rank once any rank has returned."""
    names, failure, mine = None, None, []
    try:
        if topo.rank == topo.leader:
            names = [Segment.new_name() for _ in sizes]
            try:
                for n, s in zip(names, sizes):
                    mine.append(Segment(n, s, create=True))
            except (OSError, MultiwriteError) as e:
                failure = f"rank {topo.rank} (node leader): {e}"
        all_names = transport.allgather_obj(failure or names)
        # A node that could not create its segments fails every rank at once, not by a timeout
        failed = [x for x in all_names if isinstance(x, str)]
        if failed:
            for seg in mine:
                seg.close()
            raise MultiwriteError(f"creating node shared memory failed: {failed[0]}")
        if topo.rank != topo.leader:
            mine = [Segment(n, s, create=False) for n, s in zip(all_names[topo.leader], sizes)]
        if before_barrier is not None:
            before_barrier(mine)
        transport.barrier()  # every rank of every node has mapped its segments
    finally:
        if names is not None:
            for n in names:
                Segment.unlink(n)
    return mine
