"""Shared memory inside a node: POSIX segments in /dev/shm, mapped by every rank of the node.

The node leader creates a segment, the others map it, and the leader unlinks the name as soon as
everyone has it mapped: the memory lives exactly as long as the processes, and nothing is left in
/dev/shm after a run or a crash.
"""
import mmap
import os
import secrets

import numpy as np

SHM_DIR = "/dev/shm"
NAME_PREFIX = "multiwrite-"


class Segment:
    """One mapping of a node-shared segment; ``array`` is a writable uint8 view of all of it."""

    def __init__(self, name, nbytes, create):
        self.name, self.nbytes = name, nbytes
        path = os.path.join(SHM_DIR, name)
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
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


def create_node_segments(transport, topo, sizes):
    """Collective over the whole group: one segment per entry of ``sizes`` on every node.

    Returns this rank's mappings. Uses two control allgathers (names out, then 'mapped' back).
    """
    names = None
    mine = []
    try:
        if topo.rank == topo.leader:
            names = [Segment.new_name() for _ in sizes]
            mine = [Segment(n, s, create=True) for n, s in zip(names, sizes)]
        all_names = transport.allgather_obj(names)
        if topo.rank != topo.leader:
            mine = [Segment(n, s, create=False) for n, s in zip(all_names[topo.leader], sizes)]
        transport.barrier()  # every rank of every node has mapped its segments
    finally:
        if names is not None:
            for n in names:
                Segment.unlink(n)
    return mine
