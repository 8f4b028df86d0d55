"""The operations of the stress test (AllGather, Window multi_write, MoE dispatch and combine), the
warm-up prologue and the random mix; each step returns (op, bytes verified, wrong bytes, seconds)."""
import math
import time

import numpy as np
import torch

from .data import Pools, check_dispatch, compare, dispatch_reference, moe_inputs
from .faults import delay

OPS = ("allgather", "multiwrite", "dispatch", "combine")
AG_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
             torch.float32, torch.float64)
MOE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
MAX_WINDOWS = 4              # windows the multi_write mix keeps alive at most


class Stress:
    """The operations of the mix, each verified: step(i) runs step i (the prologue's, then random ones)."""

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
        delay(self.args, self.me)
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
        return compare(ob, expected) + (dt,)

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
        verified, wrong = compare(win.buffer, expected)
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
        ref = dispatch_reference(inputs, me, E, P)
        verified, wrong = check_dispatch((recv_x, recv_idx, recv_w, per_expert), ref)
        if cached:       # the same routing again through the handle, with new token data
            inputs2 = [moe_inputs(self.args.seed, i, s, Ts[s], H, E, k, dtype, routing, P, node_of, salt=1)
                       for s in range(P)]
            inputs2 = [(x2, idx_s, w_s) for (x2, _, _), (_, idx_s, w_s) in zip(inputs2, inputs)]
            t0 = time.perf_counter()
            got2 = buf.dispatch(inputs2[me][0], handle=handle)
            dt += time.perf_counter() - t0
            v2, w2 = check_dispatch(got2[:4], dispatch_reference(inputs2, me, E, P))
            verified, wrong = verified + v2, wrong + w2
        self.moe = (buf, handle, inputs, E, P, H, dtype, i)
        return verified, wrong, dt

    def combine(self, i, rng, spec=None):
        buf, handle, inputs, E, P, H, dtype, step = self.moe
        self.moe = None
        me = self.me
        ref = dispatch_reference(inputs, me, E, P)
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
        return compare(out, expected.to(dtype)) + (dt,)
