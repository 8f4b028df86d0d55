"""Memory readings of a stress rank: RSS and its parts, glibc's mmap threshold and malloc_trim, the
node-shared pages touched before a reading, and the sizes of the runtime's grow-only buffers."""
import ctypes


def rss_detail():
    """Resident memory of this process in MiB: total (VmRSS) and its parts RssAnon (heap, private
    buffers), RssFile (mapped libraries) and RssShmem (node-shared segments this rank has touched)."""
    out = {"rss": float("nan"), "anon": float("nan"), "file": float("nan"), "shmem": float("nan")}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "shmem"}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k = keys.get(line.split(":", 1)[0] + ":")
                if k:
                    out[k] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return out


def set_malloc_mmap_threshold(nbytes):
    """glibc mallopt(M_MMAP_THRESHOLD, nbytes) (a fixed threshold: no dynamic adjustment). True if set."""
    if nbytes <= 0:
        return False
    try:
        return bool(ctypes.CDLL(None).mallopt(-3, int(nbytes)))      # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


def touch_shared_pages(g, windows):
    """Read one byte of every page of the node-shared memory this rank maps (the group's segments and
    the windows), right before an RSS reading. A shared page counts in a rank's RSS only once the rank
    has touched it, and ranks touch the pages of node buffers they already map bit by bit (a routing
    that puts its rows in a region of the dispatch buffer it never read, ...): RSS growth that is no
    new memory. Touching them all at both readings compares the same mapped memory."""
    arrays = [seg.array for seg in getattr(g, "_buffers", {}).values()]
    arrays += [a for a in (getattr(g, "ctrl", None), getattr(getattr(g, "_round_seg", None), "array", None))
               if a is not None]
    arrays += [w._mem for w, *_ in windows if getattr(w, "_mem", None) is not None]
    for a in arrays:
        if a.nbytes:
            int(a[::4096].sum())


def malloc_trim():
    """glibc's malloc_trim(0): give the free pages of the heap back to the kernel. Used only right
    after the warm-up and end RSS readings, to tell memory still in use (a leak) from free memory the
    allocator keeps (fragmentation). False where unavailable."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


def rss_mib():
    return rss_detail()["rss"]


def runtime_buffers_mib(g, stress=None):
    """MiB held by the group's grow-only buffers (node-shared segments mapped by this rank, private
    buffers) and by this driver's scratch buffers: what should stop growing after the warm-up."""
    try:
        shared = sum(seg.nbytes for seg in getattr(g, "_buffers", {}).values())
        private = sum(b.nbytes for b in getattr(g, "_private", {}).values())
    except Exception:
        shared = private = float("nan")
    scratch = sum(b.numel() for b in stress.scratch.values()) if stress is not None else 0
    return {"node_shared": round(shared / 2**20, 2), "private": round(private / 2**20, 2),
            "driver": round(scratch / 2**20, 2)}
