"""Long randomized stress test: ``python -m multiwrite.stress --duration 30m`` under mpirun or torchrun.

    mpirun --with-ft ulfm -n 8 python -m multiwrite.stress --duration 30m --json stress.json
    torchrun --nproc-per-node 8 -m multiwrite.stress --duration 30m

(``--with-ft ulfm``: Open MPI 5's fault tolerance (ULFM), so that a dead rank makes the survivors' MPI
calls fail and each survivor report it, instead of prterun killing the whole job; only --kill-rank
needs it. It cannot be set through the environment: OMPI_MCA_mpi_ft_enable=1 alone leaves prterun
killing the job.)

Every rank runs the same randomized sequence of operations (a shared generator seeded by --seed and
the step number decides the operation and its parameters; each rank's data comes from the seed, the
step and the rank):

* ``allgather``  mw.all_gather of 1 byte .. --max-bytes per rank, random dtype and mode;
* ``multiwrite`` mw.Window multi_write: every rank writes a random payload to a random subset of
  ranks (itself included or not, empty sets too) at random offsets (one offset for all, or a list),
  random mode; between two fences; windows are created and freed along the way. Bytes nobody wrote
  must still hold the poison pattern; the arrival counters must count exactly the writes received;
* ``dispatch``   mw.Buffer.dispatch with random token counts per rank (0 included), hidden size, dtype,
  E, k and routing (uniform, uniform with -1 slots, Zipf-skewed, all to one node, none at all),
  random mode, sometimes repeated with the handle (cached dispatch) on new data;
* ``combine``    mw.Buffer.combine of that dispatch's rows (small integers, so sums are exact); half of
                 the calls write them in place into Buffer.get_combine_buffer's zero-copy buffer.

Every result is compared byte for byte with a reference each rank computes locally from the seeds
(never from what the network delivered). Rank 0 shows a progress bar on stderr (ops, bytes verified,
wrong bytes, running p50/p99 per operation of its own calls). The final summary gives, per operation,
the count and p50/p99/max latency (each call's time = max over ranks), the bytes verified, the wrong
bytes (the exit status is 1 if any), and every rank's RSS (VmRSS) at start, after warm-up and at the
end: growth after warm-up in MiB and %, split into anonymous and shared-memory pages, the highest RSS
seen after warm-up (sampled at every agreement), and the RSS right after malloc_trim(0) at the
warm-up point and at the end ("in use": without the free heap pages glibc keeps, which come and go
by tens of MiB with the sizes of the last temporaries). To keep that apart from leaks, the stress
sets glibc's mmap threshold to a fixed 256 KiB (--malloc-mmap-threshold): large temporaries then go
back to the kernel when freed instead of staying in the heap. Both readings are taken after reading
one byte of every page of the node-shared memory the rank maps (a shared page counts in a rank's
RSS only once that rank touched it, which otherwise happens bit by bit as routings vary).

Warm-up: the run starts with a prologue that runs every operation at every power-of-two size up to
its maximum and at its worst-case routing (every token to k = 8 experts spread over all ranks, float32,
largest hidden size and token count; MAX_WINDOWS windows of the largest size), in both modes, then
--warmup random steps. The runtime keeps its node-shared and private buffers at the largest size
seen, and the driver reuses its own buffers: after the warm-up they have their final sizes (the
summary checks it: "grow-only buffers ... unchanged after warm-up"), so RSS growth after the
warm-up would be a leak. Windows are the application's memory and the mix frees and creates them
with random sizes: right before the warm-up reading and again before the end reading, all windows
are freed and MAX_WINDOWS windows of the largest size are created and written, so that both
readings count the same windows.

Faults: ``--delay-rank R --delay-ms X`` makes rank R sleep X ms before every operation (results must
stay right); ``--kill-rank R --at S`` SIGKILLs rank R S seconds after the start: the survivors must
fail with a clear error within the timeout (MULTIWRITE_TIMEOUT, or --timeout), never hang; exit 3.
Under mpirun this needs ``mpirun --with-ft ulfm`` (without it prterun kills the whole job as soon as
a rank dies, before the survivors can say anything): each survivor prints "stress: rank R: FAILED in
step #N (op) ...: MultiwriteError: ...: MPI error: MPI_ERR_PROC_FAILED ... (dead peer: rank R')"
(or MPI_ERR_REVOKED: the first survivor to see the failure revokes the communicator so that no one
waits for the timeout; or a node-local wait's timeout), and waits until every survivor has reported
(MPI_Comm_agree, at most the timeout) before exiting. Under torchrun the agent SIGTERMs the
survivors as soon as a worker dies (each says so). ``--hang-rank R --at S`` SIGSTOPs rank R instead
(alive, silent): the survivors must time out after MULTIWRITE_TIMEOUT.
"""
import argparse
import array
import ctypes
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np
import torch

OPS = ("allgather", "multiwrite", "dispatch", "combine")
AG_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
             torch.float32, torch.float64)
MOE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
POOL_PAD = 1 << 16
MAX_WINDOWS = 4              # windows the multi_write mix keeps alive at most


def parse_duration(text):
    """'30m', '90s', '1.5h', '45' (seconds) -> seconds."""
    t = str(text).strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    num = t[:-1] if mult else t
    try:
        value = float(num) * (mult or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (examples: 90s, 30m, 2h)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive, got {text!r}")
    return value


def _size(text):
    from .bench import parse_size
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser():
    p = argparse.ArgumentParser(prog="python -m multiwrite.stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=parse_duration, default=parse_duration("60s"),
                   help="how long to run: 90s, 30m, 2h (default 60s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the operation sequence and the data (default 1)")
    p.add_argument("--ops", default=",".join(OPS),
                   help=f"operations to mix (default {','.join(OPS)}; combine implies dispatch)")
    p.add_argument("--max-bytes", type=_size, default=_size("1M"),
                   help="largest AllGather chunk / multi_write payload per rank (default 1M)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens per rank in dispatch (default 256)")
    p.add_argument("--max-hidden", type=int, default=2048, help="largest hidden size in dispatch (default 2048)")
    p.add_argument("--warmup", type=int, default=100,
                   help="random steps after the maximum-size prologue that still count as warm-up: warm-up steps "
                        "are verified but not counted in the latency statistics nor in the RSS growth (default 100)")
    p.add_argument("--sync-every", type=int, default=4,
                   help="steps between two agreements on stopping / progress updates (default 4)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds any wait on a peer may take (sets MULTIWRITE_TIMEOUT; default: its value or 300)")
    p.add_argument("--delay-rank", type=int, default=None, metavar="R", help="fault: rank R sleeps before every op")
    p.add_argument("--delay-ms", type=float, default=0.0, metavar="X", help="fault: ... for X ms")
    p.add_argument("--kill-rank", type=int, default=None, metavar="R", help="fault: SIGKILL rank R ...")
    p.add_argument("--hang-rank", type=int, default=None, metavar="R",
                   help="fault: rank R stops (SIGSTOP: alive, sockets open, silent) ...")
    p.add_argument("--at", type=parse_duration, default=None, metavar="S",
                   help="... S seconds after the start (10s, 1m), for --kill-rank / --hang-rank")
    p.add_argument("--malloc-mmap-threshold", type=_size, default=_size("256K"), metavar="BYTES",
                   help="glibc: allocations from this size on come from mmap and go back to the kernel when freed "
                        "(default 256K; 0 = glibc's own, which moves the threshold up to 32 MiB after large frees, "
                        "after which the heap keeps tens of MiB of free temporaries per rank: RSS growth that is "
                        "no leak)")
    p.add_argument("--json", metavar="FILE", help="rank 0 writes the summary as JSON to FILE")
    p.add_argument("--progress-interval", type=float, default=10.0,
                   help="seconds between progress lines when stderr is not a terminal (default 10)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


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


def _fmt_bytes(n):
    for unit, m in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= m:
            return f"{n / m:.2f} {unit}"
    return f"{int(n)} B"


def _fmt_time(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


# ---------------------------------------------------------------------------------------------------
# deterministic data

class Pools:
    """A random byte pool per rank (from the seed); rank s's payload of step i is a slice of its pool
    at a step-dependent offset XOR a step-dependent key: cheap to generate on every rank."""

    def __init__(self, seed, P, max_bytes):
        self.pool = [np.random.default_rng([seed, 99, s]).integers(0, 256, max_bytes + POOL_PAD, dtype=np.uint8)
                     for s in range(P)]

    def chunk(self, step, s, n, salt=0, out=None):
        h = (step * 2654435761 + s * 40503 + salt * 9973) & 0xFFFFFFFF
        off, key = h % POOL_PAD, (h >> 16) & 0xFF or 0x5C
        src = self.pool[s][off:off + n]
        if out is None:
            return np.bitwise_xor(src, key)
        np.bitwise_xor(src, key, out=out)
        return out


def moe_inputs(seed, step, s, T, H, E, k, dtype, routing, P, node_of, salt=0):
    """Rank s's tokens (small integers, exact in every float dtype), routing and weights for one step."""
    rng = np.random.default_rng([seed, step, s, 7, salt])
    a = rng.integers(0, 251, T).astype(np.int16)         # int16: no T x H int64 temporaries
    b = np.random.default_rng([seed, step, 8, salt]).integers(0, 251, H).astype(np.int16)
    x = torch.from_numpy(((a[:, None] + b[None, :]) % 251).astype(np.float32)).to(dtype)
    if routing == "none" or T == 0:
        idx = np.full((T, k), -1, dtype=np.int64)
    else:
        # k distinct experts per token: top-k of random keys (Gumbel top-k = sampling without
        # replacement with probability ~ popularity)
        keys = rng.random((T, E))
        if routing == "skewed":
            zipf = 0.5 + (step % 7) / 4
            pop = 1.0 / (np.random.default_rng([seed, step, 9]).permutation(E) + 1.0) ** zipf
            keys = np.log(pop)[None, :] - np.log(-np.log(np.maximum(keys, 1e-300)))
        elif routing == "one_node":
            first = [r for r in range(P) if node_of[r] == 0]
            lo, hi = min(first) * (E // P), (max(first) + 1) * (E // P)
            keys[:, :lo] = -1.0
            keys[:, hi:] = -1.0
        kk = min(k, E)
        idx = np.argsort(-keys, axis=1, kind="stable")[:, :kk].astype(np.int64)
        if routing == "one_node":
            idx[np.take_along_axis(keys, idx, 1) < 0] = -1
        if routing == "uniform_none":
            idx[rng.random((T, kk)) < 0.2] = -1
    idx = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    w = torch.from_numpy(rng.random((T, k), dtype=np.float32))
    return x, idx, w


# ---------------------------------------------------------------------------------------------------
# the operations: each returns (bytes verified, wrong bytes, seconds of the timed call)

def _cmp(got, expected):
    """(bytes compared, wrong bytes) of two tensors/arrays; a shape mismatch makes every byte wrong."""
    def raw(t):
        if isinstance(t, torch.Tensor):
            t = t.detach().contiguous()
            return t.reshape(-1).view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        return np.ascontiguousarray(t).reshape(-1).view(np.uint8)
    a, b = raw(got), raw(expected)
    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and tuple(got.shape) != tuple(expected.shape):
        return b.nbytes, max(a.nbytes, b.nbytes, 1)
    if a.nbytes != b.nbytes:
        return b.nbytes, max(a.nbytes, b.nbytes, 1)
    return b.nbytes, int(np.count_nonzero(a != b))


class Stress:
    def __init__(self, args, mw, state=None):
        self.args, self.mw = args, mw
        self.state = state if state is not None else {}
        self.topo = mw.topology()
        self.P, self.me = self.topo.world_size, self.topo.rank
        self.g = mw.default_group()
        self.pools = Pools(args.seed, self.P, args.max_bytes)
        self.windows = []           # (Window, slot bytes, created at step)
        self.moe = None             # (handle, buffer, inputs...) of the last dispatch, for combine
        self.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
        bad = [o for o in self.ops if o not in OPS]
        if bad or not self.ops:
            raise ValueError(f"--ops: unknown {bad}; choose from {','.join(OPS)}")
        if "combine" in self.ops and "dispatch" not in self.ops:
            self.ops.append("dispatch")
        self.scratch = {}
        self.prologue = self._build_prologue()

    # -- the warm-up prologue ------------------------------------------------------------------
    def hidden_sizes(self):
        return [h for h in (8, 64, 256, 1000, 1024, 2048, 4096) if h <= self.args.max_hidden] or [8]

    def _build_prologue(self):
        """The first steps of every run, before the random mix: each operation at every power-of-two
        size up to its maximum (twice in a row: the runtime alternates some buffers between
        consecutive calls) and at its worst-case routing, in both modes. Every buffer of the runtime
        (node-shared and private, grown to the largest size seen and kept) and of this driver reaches
        its final size here, so that RSS growth after the warm-up measures leaks, not first use."""
        a, P = self.args, self.P
        modes = ("multiwrite", "unicast")
        pro = []

        def ladder(top):
            sizes, v = [], 1
            while v < top:
                sizes.append(v)
                v *= 2
            return sizes + [top]
        if "allgather" in self.ops:
            for nbytes in ladder(a.max_bytes):
                for mode in modes:
                    pro += [("allgather", (torch.uint8, nbytes, mode))] * 2
            for mode in modes:
                pro.append(("allgather", (torch.float64, a.max_bytes, mode)))
        pro += self.window_specs()
        if "dispatch" in self.ops:
            H = max(self.hidden_sizes())
            # k = 8 distinct experts per token spread over every rank (all of them when P <= 8): the most
            # rows any rank, node or send buffer can get; float32 rows, the largest
            m = next((m for m in (1, 2, 4, 8) if P * m >= 8), 8)
            E = P * m
            k = min(8, E)
            for T in ladder(max(1, a.max_tokens)) if a.max_tokens > 0 else [0]:
                for mode in modes:
                    for _ in range(2):
                        pro.append(("dispatch", dict(dtype=torch.float32, H=H, E=E, k=k, routing="all",
                                                     Ts=[T] * P, mode=mode, cached=True)))
                        if "combine" in self.ops:
                            pro.append(("combine", None))
        return pro

    def window_specs(self):
        """multi_write steps that create as many windows as the mix ever keeps, all of the largest
        size, and write every byte of them (both modes): the warm-up's window state (and the end's)."""
        if "multiwrite" not in self.ops:
            return []
        return [("multiwrite", (self.args.max_bytes if j == 0 else None, w, mode, j == 1))
                for w in range(MAX_WINDOWS) for j, mode in enumerate(("multiwrite", "unicast"))]

    def run_spec(self, i, op, spec):
        self.state["op"] = op
        fn = {"allgather": self.allgather, "multiwrite": self.multiwrite, "dispatch": self.dispatch,
              "combine": self.combine}[op]
        return (op,) + fn(i, np.random.default_rng([self.args.seed, i, 1]), spec)

    # -- one step ---------------------------------------------------------------------------
    def step(self, i):
        rng = np.random.default_rng([self.args.seed, i, 1])
        spec = None
        if i < len(self.prologue):
            op, spec = self.prologue[i]
        else:
            weights = {"allgather": 3, "multiwrite": 3, "dispatch": 2, "combine": 2}
            names = list(self.ops)
            p = np.array([weights[n] for n in names], dtype=float)
            op = names[rng.choice(len(names), p=p / p.sum())]
        if op == "combine" and self.moe is None:
            op = "dispatch"
        self.state["op"] = op
        if self.args.delay_rank == self.me and self.args.delay_ms > 0:
            time.sleep(self.args.delay_ms / 1e3)
        fn = {"allgather": self.allgather, "multiwrite": self.multiwrite, "dispatch": self.dispatch,
              "combine": self.combine}[op]
        return (op,) + fn(i, rng, spec)

    def _scratch(self, name, nbytes):
        """A reusable uint8 tensor of this driver (grown to the largest size asked, kept): no large
        temporaries per step, which would fragment the heap and blur the RSS figures."""
        buf = self.scratch.get(name)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 4096), dtype=torch.uint8)
            self.scratch[name] = buf
        return buf[:nbytes]

    def allgather(self, i, rng, spec=None):
        mw, P = self.mw, self.P
        if spec is None:
            dtype = AG_DTYPES[rng.integers(len(AG_DTYPES))]
            nbytes = int(math.exp(rng.uniform(0, math.log(self.args.max_bytes))))
            mode = ("multiwrite", "unicast")[rng.integers(2)]
        else:
            dtype, nbytes, mode = spec
        es = torch.empty(0, dtype=dtype).element_size()
        count = max(0, nbytes // es)
        c = count * es
        x = self._scratch("ag_in", c).view(dtype)
        self.pools.chunk(i, self.me, c, out=x.view(torch.uint8).numpy())
        out = self._scratch("ag_out", P * c).view(dtype)
        ob = out.view(torch.uint8).numpy()
        expected = self._scratch("ag_expected", P * c).numpy()
        for s in range(P):
            self.pools.chunk(i, s, c, out=expected[s * c:(s + 1) * c])
        np.bitwise_xor(expected, 0xFF, out=ob)           # poison: wrong everywhere until written
        t0 = time.perf_counter()
        mw.all_gather(out, x, mode=mode)
        dt = time.perf_counter() - t0
        return _cmp(ob, expected) + (dt,)

    def _window(self, i, rng):
        """Pick a window (sometimes create one, sometimes free one: collective, same choice everywhere)."""
        mw, P = self.mw, self.P
        if not self.windows or (len(self.windows) < MAX_WINDOWS and rng.random() < 0.05):
            slot = int(rng.choice([64, 1000, 4096, 65536, max(64, self.args.max_bytes // 4), self.args.max_bytes]))
            self.windows.append((mw.Window(P * slot), slot, i))
        elif len(self.windows) > 1 and rng.random() < 0.03:
            win, _, _ = self.windows.pop(int(rng.integers(len(self.windows))))
            win.free()
        return self.windows[int(rng.integers(len(self.windows)))]

    def multiwrite(self, i, rng, spec=None):
        P, me = self.P, self.me
        if spec is None:
            win, slot, _ = self._window(i, rng)
            plan = []
            for s in range(P):
                n = int(rng.integers(0, slot + 1)) if rng.random() < 0.9 else int(rng.integers(0, 2))
                dests = [int(d) for d in np.flatnonzero(rng.random(P) < rng.uniform(0, 1))]
                rng.shuffle(dests)
                per_dest = rng.random() < 0.5
                offs = [s * slot + int(rng.integers(0, slot - n + 1)) for _ in dests] if per_dest else \
                    [s * slot + int(rng.integers(0, slot - n + 1))] * len(dests)
                plan.append((n, dests, offs, per_dest))
            mode = ("multiwrite", "unicast")[rng.integers(2)]
        else:      # prologue: (new window's slot or None, window index, mode, per_dest): all write all, full slot
            new_slot, w, mode, per_dest = spec
            if new_slot is not None:
                self.windows.append((self.mw.Window(P * new_slot), new_slot, i))
            win, slot, _ = self.windows[w]
            plan = [(slot, list(range(P)), [s * slot] * P, per_dest) for s in range(P)]
        poison = (0xA5 ^ (i & 0xFF)) & 0xFF
        win.buffer[:] = poison
        before = win.arrivals().copy()
        win.fence()                          # every window poisoned before anyone writes
        n, dests, offs, per_dest = plan[me]
        data = self._scratch("mw_data", n).numpy()
        self.pools.chunk(i, me, n, salt=1, out=data)
        t0 = time.perf_counter()
        req = win.multi_write(data, dests, offs if per_dest else (offs[0] if offs else 0), mode=mode)
        req.wait()
        win.fence()
        dt = time.perf_counter() - t0
        expected = self._scratch("mw_expected", win.nbytes).numpy()
        expected.fill(poison)
        arrivals = np.zeros(P, dtype=np.int64)
        for s, (n_s, d_s, o_s, _) in enumerate(plan):
            if me in d_s:
                off = o_s[d_s.index(me)]
                self.pools.chunk(i, s, n_s, salt=1, out=expected[off:off + n_s])
                arrivals[s] += 1
        verified, wrong = _cmp(win.buffer, expected)
        got = (win.arrivals() - before) & 0xFFFFFFFF
        wrong += int(np.count_nonzero(got != arrivals)) * 4
        return verified + 4 * P, wrong, dt

    def dispatch(self, i, rng, spec=None):
        mw, P, me = self.mw, self.P, self.me
        topo = self.topo
        if spec is None:
            dtype = MOE_DTYPES[rng.integers(len(MOE_DTYPES))]
            H = int(rng.choice(self.hidden_sizes()))
            E = P * int(rng.choice([1, 2, 4, 8]))
            k = int(rng.integers(1, min(8, E) + 1))
            routing = str(rng.choice(["uniform", "uniform_none", "skewed", "one_node", "none"],
                                     p=[.4, .2, .25, .1, .05]))
            Ts = [int(rng.integers(0, self.args.max_tokens + 1)) if rng.random() < 0.95 else 0 for _ in range(P)]
            mode = ("multiwrite", "unicast")[rng.integers(2)]
            cached = rng.random() < 0.3
        else:
            dtype, H, E, k, routing, Ts, mode, cached = (spec[n] for n in ("dtype", "H", "E", "k", "routing", "Ts",
                                                                           "mode", "cached"))
        node_of = topo.node_of
        inputs = [moe_inputs(self.args.seed, i, s, Ts[s], H, E, k, dtype, routing, P, node_of) for s in range(P)]
        x, idx, w = inputs[me]
        buf = mw.Buffer(mode=mode)
        t0 = time.perf_counter()
        recv_x, recv_idx, recv_w, per_expert, handle = buf.dispatch(x, idx, w, E)
        dt = time.perf_counter() - t0
        ref = _dispatch_reference(inputs, me, E, P)
        verified, wrong = _check_dispatch((recv_x, recv_idx, recv_w, per_expert), ref)
        if cached:       # the same routing again through the handle, with new token data
            inputs2 = [moe_inputs(self.args.seed, i, s, Ts[s], H, E, k, dtype, routing, P, node_of, salt=1)
                       for s in range(P)]
            inputs2 = [(x2, idx_s, w_s) for (x2, _, _), (_, idx_s, w_s) in zip(inputs2, inputs)]
            t0 = time.perf_counter()
            got2 = buf.dispatch(inputs2[me][0], handle=handle)
            dt += time.perf_counter() - t0
            v2, w2 = _check_dispatch(got2[:4], _dispatch_reference(inputs2, me, E, P))
            verified, wrong = verified + v2, wrong + w2
        self.moe = (buf, handle, inputs, E, P, H, dtype, i)
        return verified, wrong, dt

    def combine(self, i, rng, spec=None):
        buf, handle, inputs, E, P, H, dtype, step = self.moe
        self.moe = None
        me = self.me
        ref = _dispatch_reference(inputs, me, E, P)
        src = torch.tensor([s for s, _ in ref["rows"]], dtype=torch.int64)
        tok = torch.tensor([t for _, t in ref["rows"]], dtype=torch.int64)
        col = torch.arange(H, dtype=torch.int64)
        y = ((3 * src[:, None] + 5 * tok[:, None] + 7 * me + col[None, :] + i) % 8).to(dtype)
        if rng.random() < 0.5:     # half of the calls take their input in place (get_combine_buffer)
            y = buf.get_combine_buffer(handle, H, dtype).copy_(y)
        t0 = time.perf_counter()
        out = buf.combine(y, handle)
        dt = time.perf_counter() - t0
        # expected on this (source) rank: sum over the ranks d that got token t of (3me + 5t + 7d + col + i) % 8
        idx = inputs[me][1]
        T = idx.shape[0]
        per = E // P
        expected = torch.zeros(T, H, dtype=torch.float32)
        t = torch.arange(T, dtype=torch.int64)
        for d in range(P):
            hit = ((idx >= d * per) & (idx < (d + 1) * per)).any(dim=1)
            if hit.any():
                v = ((3 * me + 5 * t[hit][:, None] + 7 * d + col[None, :] + i) % 8).float()
                expected[hit] += v
        return _cmp(out, expected.to(dtype)) + (dt,)


def _dispatch_reference(inputs, me, E, P):
    per = E // P
    lo, hi = me * per, (me + 1) * per
    rows, xs, ids, ws = [], [], [], []
    for s, (x, idx, w) in enumerate(inputs):
        if idx.shape[0] == 0:
            continue
        hit = torch.nonzero(((idx >= lo) & (idx < hi)).any(dim=1)).flatten()
        rows += [(s, int(t)) for t in hit]
        xs.append(x[hit])
        sel = idx[hit]
        ids.append(torch.where((sel >= lo) & (sel < hi), sel - lo, torch.full_like(sel, -1)))
        ws.append(w[hit])
    k = inputs[0][1].shape[1]
    H = inputs[0][0].shape[1]
    dtype = inputs[0][0].dtype
    x = torch.cat(xs) if xs else torch.empty(0, H, dtype=dtype)
    idx = torch.cat(ids) if ids else torch.empty(0, k, dtype=torch.int64)
    w = torch.cat(ws) if ws else torch.empty(0, k, dtype=torch.float32)
    per_expert = torch.bincount(idx[idx >= 0], minlength=per).tolist() if idx.numel() else [0] * per
    return {"rows": rows, "x": x, "idx": idx, "w": w, "per_expert": per_expert}


def _check_dispatch(got, ref):
    recv_x, recv_idx, recv_w, per_expert = got
    v, wr = 0, 0
    for a, b in ((recv_x, ref["x"]), (recv_idx, ref["idx"]), (recv_w, ref["w"])):
        dv, dw = _cmp(a, b)
        v, wr = v + dv, wr + dw
    pe = np.asarray(list(per_expert), dtype=np.int64)
    dv, dw = _cmp(pe, np.asarray(ref["per_expert"], dtype=np.int64))
    return v + dv, wr + dw


# ---------------------------------------------------------------------------------------------------
# driver

class Bar:
    def __init__(self, enabled, duration, interval):
        self.on = enabled
        self.tty = sys.stderr.isatty()
        self.duration, self.interval = duration, interval
        self.last = -1e9

    def show(self, elapsed, text, force=False):
        if not self.on:
            return
        now = time.monotonic()
        if not force and not self.tty and now - self.last < self.interval:
            return
        if not force and self.tty and now - self.last < 0.25:
            return
        self.last = now
        frac = min(1.0, elapsed / self.duration)
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        line = f"[{bar}] {frac * 100:5.1f}% {_fmt_time(elapsed)}/{_fmt_time(self.duration)} {text}"
        if self.tty:
            sys.stderr.write("\r" + line[:200] + "\033[K")
            if force:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _pct(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(math.ceil(q / 100 * len(v))) - 1))]


def run(args):
    if args.timeout is not None:
        os.environ["MULTIWRITE_TIMEOUT"] = str(args.timeout)
    import multiwrite as mw
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    state = {"step": -1, "op": "init"}
    t_start = time.monotonic()

    def on_term(signum, frame):
        print(f"stress: rank {os.environ.get('RANK', os.environ.get('OMPI_COMM_WORLD_RANK', '?'))}: FAILED: "
              f"terminated by {signal.Signals(signum).name} in step #{state['step']} ({state['op']}) after "
              f"{time.monotonic() - t_start:.1f}s: the launcher stops the job (another rank failed?)",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    mw.init()
    g = mw.default_group()
    topo = mw.topology()
    P, me = topo.world_size, topo.rank
    for opt, val in (("--delay-rank", args.delay_rank), ("--kill-rank", args.kill_rank),
                     ("--hang-rank", args.hang_rank)):
        if val is not None and not 0 <= val < P:
            raise ValueError(f"{opt} {val}: no such rank (world size {P})")
    if (args.kill_rank is not None or args.hang_rank is not None) and args.at is None:
        raise ValueError("--kill-rank / --hang-rank need --at (seconds after the start)")
    stress = Stress(args, mw, state)
    warm_steps = len(stress.prologue) + args.warmup
    rss = {"start": rss_detail()}
    bufs = {"start": runtime_buffers_mib(g, stress)}
    peak = {"rss": float("nan")}
    bar = Bar(me == 0 and not args.quiet, args.duration, args.progress_interval)
    if me == 0:
        print(f"stress: {P} ranks on {topo.num_nodes} nodes ({'+'.join(str(len(r)) for r in topo.node_ranks)}), "
              f"transport {g.transport.name}, ops {','.join(stress.ops)}, duration {_fmt_time(args.duration)}, "
              f"seed {args.seed}, max {_fmt_bytes(args.max_bytes)}, timeout {g.timeout_s:g}s, malloc mmap "
              f"threshold {_fmt_bytes(args.malloc_mmap_threshold) if args.malloc_mmap_threshold > 0 else 'glibc default'}"
              + (f", delay rank {args.delay_rank} by {args.delay_ms:g} ms" if args.delay_rank is not None else "")
              + (f", kill rank {args.kill_rank} at {args.at:g}s" if args.kill_rank is not None else "")
              + (f", hang rank {args.hang_rank} at {args.at:g}s" if args.hang_rank is not None else ""), flush=True)
    if me == 0 and args.kill_rank is not None and g.transport.name == "mpi" \
            and not getattr(g.transport, "fault_tolerant", False):
        print(f"stress: note: MPI without fault tolerance: when rank {args.kill_rank} dies the launcher aborts "
              f"the whole job before the survivors can report (Open MPI: launch with mpirun --with-ft ulfm)",
              file=sys.stderr, flush=True)
    if me in (args.kill_rank, args.hang_rank):
        sig, opt = (signal.SIGKILL, "--kill-rank") if me == args.kill_rank else (signal.SIGSTOP, "--hang-rank")

        def die():
            print(f"stress: rank {me}: sending myself {sig.name} at {time.monotonic() - t_start:.1f}s as asked "
                  f"({opt} {me} --at {args.at:g})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), sig)
        killer = threading.Timer(max(0.0, args.at - (time.monotonic() - t_start)), die)
        killer.daemon = True
        killer.start()

    def reset_windows(i):
        """The same window set at the warm-up point and at the end, whatever the mix freed and created
        in between (random sizes): MAX_WINDOWS windows of the largest size, every byte written; so
        that both RSS readings count the same windows. Verified steps like the others; returns i."""
        if not stress.window_specs():
            return i
        for win, _, _ in stress.windows:
            win.free()
        stress.windows.clear()
        for op_, spec in stress.window_specs():
            state["step"] = i
            op, v, w, dt = stress.run_spec(i, op_, spec)
            tally(i, op, v, w)
            i += 1
        return i

    def tally(i, op, v, w):
        """Count step i's verified and wrong bytes; the first wrong step is reported at once."""
        nonlocal verified, wrong, first_wrong
        count[op] += 1
        verified += v
        wrong += w
        if w and first_wrong is None:
            first_wrong = (i, op, w)
            print(f"stress: rank {me}: WRONG: step #{i} {op}: {w} wrong byte(s)", file=sys.stderr, flush=True)

    # (steps, seconds) of this rank's calls after warm-up, as compact arrays (12 bytes a call, not a
    # tuple of ~100): the statistics of a 30-minute run must not show up as memory growth
    lat = {op: (array.array("q"), array.array("d")) for op in OPS}
    count = {op: 0 for op in OPS}
    verified = wrong = 0
    first_wrong = None
    i = 0
    t0 = time.monotonic()
    timeline = []                 # (step, seconds, RSS MiB) about every 5% of the run
    sample_every, next_sample = max(5.0, args.duration / 20), 0.0
    try:
        while True:
            state["step"] = i
            state["op"] = "?"
            op, v, w, dt = stress.step(i)
            state["op"] = op
            tally(i, op, v, w)
            if i >= warm_steps:
                lat[op][0].append(i)
                lat[op][1].append(dt)
            i += 1
            if i == warm_steps:
                i = reset_windows(i)
                touch_shared_pages(g, stress.windows)
                rss["warm"] = rss_detail()
                if malloc_trim():
                    rss["warm_trimmed"] = rss_detail()
                peak.update(warm=True, rss=rss["warm"]["rss"], step=i, seconds=round(time.monotonic() - t0, 1))
                bufs["warm"] = runtime_buffers_mib(g, stress)
                if os.environ.get("MW_STRESS_OBJECTS"):    # diagnostic: Python objects that pile up
                    import collections
                    import gc
                    gc.collect()
                    objs_warm = collections.Counter(type(o).__name__ for o in gc.get_objects())
            if i % args.sync_every == 0:
                state["op"] = "agreement on stopping"
                elapsed = time.monotonic() - t0
                if i > warm_steps:               # the highest RSS after the warm-up, not only the end
                    m = rss_detail()["rss"]
                    if m > peak["rss"]:
                        peak.update(rss=m, step=i, seconds=round(elapsed, 1))
                if elapsed >= next_sample:       # RSS over time: a leak grows, buffers plateau
                    m = rss_detail()
                    timeline.append((i, round(elapsed, 1), round(m["rss"], 1), round(m["anon"], 1),
                                     round(m["shmem"], 1)))
                    next_sample = elapsed + sample_every
                flags = g.allgather_obj((elapsed >= args.duration, wrong))
                stop = flags[0][0]
                total_wrong = sum(f[1] for f in flags)
                pct = "  ".join(f"{op[:4]} {_pct(lat[op][1][-2000:], 50) * 1e3:.1f}/"
                                f"{_pct(lat[op][1][-2000:], 99) * 1e3:.1f}"
                                for op in OPS if lat[op][1])
                bar.show(elapsed, f"ops {i}  verified {_fmt_bytes(verified)} (rank 0)  wrong {total_wrong} B"
                         + (f"  p50/p99 ms: {pct}" if pct else ""))
                if stop:
                    break
        if "warm" in rss:
            i = reset_windows(i)
    except Exception as exc:  # a peer died or hung, or a runtime error: clear message, no hang
        elapsed = time.monotonic() - t_start
        print(f"stress: rank {me}: FAILED in step #{state['step']} ({state['op']}) after {elapsed:.1f}s: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        _survivors_agree(g, g.timeout_s + 2.0)
        os._exit(3)     # skip finalize: peers may be gone and requests pending
    elapsed = time.monotonic() - t0
    rss.setdefault("warm", rss["start"])
    # the end is measured in the same state as the warm-up point (windows: see above)
    bufs.setdefault("warm", bufs["start"])
    bufs["end"] = runtime_buffers_mib(g, stress)
    if os.environ.get("MW_STRESS_OBJECTS") and "warm" in rss:
        import collections
        import gc
        gc.collect()
        objs_end = collections.Counter(type(o).__name__ for o in gc.get_objects())
        diff = sorted(((objs_end[k] - objs_warm.get(k, 0), k) for k in objs_end), reverse=True)[:8]
        print(f"stress: rank {me}: objects tracked by gc, growth after warm-up: "
              + ", ".join(f"{k} {d:+d}" for d, k in diff), file=sys.stderr, flush=True)
    touch_shared_pages(g, stress.windows)
    rss["end"] = rss_detail()
    if "warm_trimmed" in rss and malloc_trim():
        rss["end_trimmed"] = rss_detail()
    if "warm" not in peak:
        peak["rss"] = float("nan")
    elif rss["end"]["rss"] > peak["rss"]:
        peak.update(rss=rss["end"]["rss"], step=i, seconds=round(elapsed, 1))
    for win, _, _ in stress.windows:
        win.free()
    stress.windows.clear()
    stress.moe = None
    mine = {"count": count, "lat": {op: list(zip(*lat[op])) for op in OPS}, "verified": verified, "wrong": wrong,
            "rss": rss, "rss_peak": peak, "buffers": bufs, "first_wrong": first_wrong, "steps": i, "warm_steps": warm_steps, "timeline": timeline + [(i, round(elapsed, 1), round(rss["end"]["rss"], 1), round(rss["end"]["anon"], 1),
                                   round(rss["end"]["shmem"], 1))]}
    everyone = g.allgather_obj(mine)
    code = 0
    if me == 0:
        summary = _summary(args, topo, g, everyone, elapsed)
        bar.show(elapsed, f"ops {i} done", force=True)
        print(summary["text"], flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({k: v for k, v in summary.items() if k != "text"}, f, indent=1)
                f.write("\n")
        code = 1 if summary["wrong_bytes"] else 0
    code = g.allgather_obj(code)[0]
    return code


def _survivors_agree(g, limit_s):
    """After a failure under MPI with ULFM (``mpirun --with-ft ulfm``): revoke our communicator, so
    that survivors waiting on live peers fail at once instead of after the timeout, then wait (at
    most ``limit_s``) until every survivor has reported its own error (MPI_Comm_agree completes once
    all living ranks have joined): otherwise the first survivor's exit status makes the launcher
    kill the others before they can say what they saw. Nothing to do without ULFM or under Gloo."""
    t = g.transport
    if getattr(t, "name", "") != "mpi" or not getattr(t, "fault_tolerant", False):
        return
    try:
        t.revoke()
        flag = np.ones(1, dtype=np.int32)
        req = t.comm.Iagree(flag)
    except Exception:
        return
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if req.Test():
                return
        except Exception:      # MPI_ERR_PROC_FAILED: the agreement is done, with failed ranks
            return
        time.sleep(0.01)


def _summary(args, topo, g, everyone, elapsed):
    P = len(everyone)
    steps = everyone[0]["steps"]
    ops = {}
    lines = [f"stress summary: {P} ranks on {topo.num_nodes} nodes, transport {g.transport.name}, "
             f"{_fmt_time(elapsed)} ({elapsed:.0f}s), {steps} steps (first {everyone[0]['warm_steps']} = warm-up: "
             f"{everyone[0]['warm_steps'] - args.warmup} at maximum sizes, then {args.warmup} random), seed {args.seed}"]
    lines.append(f"  {'op':<11}{'count':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}   (time of a call = max over ranks)")
    for op in OPS:
        per_step = {}
        for r in everyone:
            for step, dt in r["lat"][op]:
                per_step[step] = max(per_step.get(step, 0.0), dt)
        vals = list(per_step.values())
        n = everyone[0]["count"][op]
        ops[op] = {"count": n, "p50_ms": _pct(vals, 50) * 1e3 if vals else None,
                   "p99_ms": _pct(vals, 99) * 1e3 if vals else None, "max_ms": max(vals) * 1e3 if vals else None}
        if n:
            lines.append(f"  {op:<11}{n:>8}{ops[op]['p50_ms'] or 0:>10.2f}{ops[op]['p99_ms'] or 0:>10.2f}"
                         f"{ops[op]['max_ms'] or 0:>10.2f}")
    verified = sum(r["verified"] for r in everyone)
    wrong = sum(r["wrong"] for r in everyone)
    counts = ", ".join(f"{op} {everyone[0]['count'][op]}" for op in OPS)
    lines.append(f"  ops done: {steps} ({counts})")
    lines.append(f"  bytes verified: {verified} ({_fmt_bytes(verified)}, all ranks)")
    lines.append(f"  wrong bytes: {wrong}" + ("" if not wrong else "  <-- FAILED: " + "; ".join(
        f"rank {r}: first at step #{e['first_wrong'][0]} ({e['first_wrong'][1]})"
        for r, e in enumerate(everyone) if e["first_wrong"])))
    lines.append("  RSS per rank (MiB): start / after warm-up / end (growth after warm-up)"
                 "   [anon + shmem at warm-up -> end]")
    rss = []
    for r, e in enumerate(everyone):
        s, w, en = e["rss"]["start"], e["rss"]["warm"], e["rss"]["end"]
        gr = en["rss"] - w["rss"]
        pct = 100.0 * gr / w["rss"] if w["rss"] > 0 else float("nan")
        rss.append({"rank": r, "start_mib": round(s["rss"], 1), "warm_mib": round(w["rss"], 1),
                    "end_mib": round(en["rss"], 1), "growth_mib": round(gr, 1), "growth_pct": round(pct, 2),
                    "anon_mib": {k: round(v["anon"], 1) for k, v in (("start", s), ("warm", w), ("end", en))},
                    "shmem_mib": {k: round(v["shmem"], 1) for k, v in (("start", s), ("warm", w), ("end", en))}})
        pk = e.get("rss_peak", {})
        pk_gr = pk.get("rss", float("nan")) - w["rss"]
        rss[-1].update(peak_mib=round(pk.get("rss", float("nan")), 1), peak_growth_mib=round(pk_gr, 1),
                       peak_growth_pct=round(100.0 * pk_gr / w["rss"], 2) if w["rss"] > 0 else None,
                       peak_at_s=pk.get("seconds"))
        lines.append(f"    rank {r}: {s['rss']:8.1f} / {w['rss']:8.1f} / {en['rss']:8.1f}  ({gr:+.1f}, {pct:+.1f}%)"
                     f"   [anon {w['anon']:.0f} -> {en['anon']:.0f}, shmem {w['shmem']:.0f} -> {en['shmem']:.0f};"
                     f" highest after warm-up {pk.get('rss', float('nan')):.1f} ({pk_gr:+.1f}) at {pk.get('seconds', '?')}s]")
    for r, e in enumerate(everyone):
        rss[r]["buffers_mib"] = e.get("buffers")
    grown = [(r, e["buffers"]["warm"], e["buffers"]["end"]) for r, e in enumerate(everyone)
             if e.get("buffers") and e["buffers"]["end"] != e["buffers"]["warm"]]
    b0 = everyone[0].get("buffers", {}).get("end", {})
    lines.append(f"  grow-only buffers (rank 0 at the end, MiB): node-shared {b0.get('node_shared')}, private "
                 f"{b0.get('private')}, driver {b0.get('driver')}; "
                 + ("unchanged after warm-up on every rank" if not grown else
                    "GREW after warm-up on rank(s) " + ", ".join(f"{r} ({w} -> {en})" for r, w, en in grown)))
    trimmed = [(r, e["rss"]["warm_trimmed"]["rss"], e["rss"]["end_trimmed"]["rss"]) for r, e in enumerate(everyone)
               if "end_trimmed" in e["rss"]]
    if trimmed:
        for r, w, en in trimmed:
            rss[r].update(warm_trimmed_mib=round(w, 1), end_trimmed_mib=round(en, 1),
                          trimmed_growth_mib=round(en - w, 1), trimmed_growth_pct=round(100.0 * (en - w) / w, 2))
        for r, e in enumerate(everyone):
            if "end_trimmed" in e["rss"]:
                rss[r]["anon_trimmed_mib"] = {"warm": round(e["rss"]["warm_trimmed"]["anon"], 1),
                                              "end": round(e["rss"]["end_trimmed"]["anon"], 1)}
        lines.append("  RSS right after malloc_trim(0) at warm-up / end (memory in use, without the free heap "
                     "glibc keeps), total [anon]: "
                     + ", ".join(f"rank {r} {w:.0f} / {en:.0f} ({en - w:+.1f}) [{rss[r]['anon_trimmed_mib']['warm']:.0f}"
                                 f" / {rss[r]['anon_trimmed_mib']['end']:.0f}]" for r, w, en in trimmed))
    worst = max(rss, key=lambda x: x["growth_mib"])
    growth, growth_pct = worst["growth_mib"], max(x["growth_pct"] for x in rss)
    peak_gr = max((x["peak_growth_mib"] for x in rss if x["peak_growth_mib"] == x["peak_growth_mib"]), default=None)
    peak_pct = max((x["peak_growth_pct"] for x in rss if x["peak_growth_pct"] is not None
                    and x["peak_growth_pct"] == x["peak_growth_pct"]), default=None)
    in_use = max(((x["trimmed_growth_mib"], x["trimmed_growth_pct"]) for x in rss if "trimmed_growth_mib" in x),
                 default=None)
    lines.append(f"  max RSS growth after warm-up: {growth:+.1f} MiB ({growth_pct:+.1f}%) at the end"
                 + (f" (in use, after malloc_trim: {in_use[0]:+.1f} MiB ({in_use[1]:+.1f}%))" if in_use else "")
                 + (f"; highest RSS after warm-up: {peak_gr:+.1f} MiB ({peak_pct:+.1f}%) above the warm-up point"
                    if peak_gr is not None else ""))
    # trends over the run, by quarter (steps split by rank 0's clock): latency and memory
    tl = everyone[0]["timeline"]
    quarters = []
    if len(tl) >= 2 and elapsed > 0:
        for q in range(4):
            t_lo, t_hi = elapsed * q / 4, elapsed * (q + 1) / 4
            qsteps = [m[0] for m in tl if t_lo <= m[1] <= t_hi] or [0]
            s_lo = max([m[0] for m in tl if m[1] <= t_lo] or [0])
            s_hi = min([m[0] for m in tl if m[1] >= t_hi] or [qsteps[-1]])
            entry = {"from_s": round(t_lo), "to_s": round(t_hi), "steps": [s_lo, s_hi], "p50_ms": {},
                     "rss_max_mib": max(max((m[2] for m in e["timeline"] if m[1] <= t_hi), default=0)
                                        for e in everyone)}
            for op in OPS:
                per_step = {}
                for e in everyone:
                    for step, dt in e["lat"][op]:
                        if s_lo <= step < s_hi:
                            per_step[step] = max(per_step.get(step, 0.0), dt)
                if per_step:
                    entry["p50_ms"][op] = round(_pct(list(per_step.values()), 50) * 1e3, 2)
            quarters.append(entry)
        lines.append("  trend by quarter of the run: p50 ms per op (max over ranks) | largest RSS so far (MiB)")
        for qd in quarters:
            lines.append(f"    {_fmt_time(qd['from_s'])}-{_fmt_time(qd['to_s'])}: "
                         + "  ".join(f"{op} {v:.1f}" for op, v in qd["p50_ms"].items())
                         + f" | {qd['rss_max_mib']:.0f}")
    lines.append("  RESULT: " + ("PASS (0 wrong bytes)" if not wrong else f"FAIL ({wrong} wrong bytes)"))
    return {"text": "\n".join(lines), "ranks": P, "nodes": topo.num_nodes, "transport": g.transport.name,
            "duration_s": elapsed, "steps": steps, "warmup": args.warmup, "warmup_steps": everyone[0]["warm_steps"], "seed": args.seed, "ops": ops,
            "bytes_verified": verified, "wrong_bytes": wrong, "rss": rss, "max_rss_growth_mib": growth,
            "max_rss_growth_pct": growth_pct, "max_rss_peak_growth_mib": peak_gr, "max_rss_peak_growth_pct": peak_pct,
            "max_rss_in_use_growth_mib": in_use[0] if in_use else None,
            "max_rss_in_use_growth_pct": in_use[1] if in_use else None,
            "rss_timeline_columns": ["step", "seconds", "rss_mib", "anon_mib", "shmem_mib"],
            "trend": quarters, "rss_timeline": {r: e["timeline"] for r, e in enumerate(everyone)},
            "args": {k: v for k, v in vars(args).items()}}


def main(argv=None):
    args = build_parser().parse_args(argv)
    if (args.delay_rank is None) != (args.delay_ms == 0):
        if args.delay_rank is None:
            print("error: --delay-ms needs --delay-rank", file=sys.stderr)
            return 2
    if args.warmup < 0 or args.sync_every < 1 or args.max_tokens < 0 or args.max_hidden < 1:
        print("error: --warmup >= 0, --sync-every >= 1, --max-tokens >= 0, --max-hidden >= 1", file=sys.stderr)
        return 2
    set_malloc_mmap_threshold(args.malloc_mmap_threshold)
    try:
        code = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    import multiwrite as mw
    mw.finalize()
    return code


if __name__ == "__main__":
    sys.exit(main())
