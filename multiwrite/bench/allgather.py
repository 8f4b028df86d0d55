"""AllGather: MPI Allgather, Gloo all_gather_into_tensor, multiwrite unicast and MultiWrite, interleaved.

Run it SPMD under a launcher, for example on a virtual cluster of 2 nodes x 4 ranks:

    scripts/bench_vcluster.sh --nodes 2 --ranks-per-node 4 --rate 1gbit --delay 100us --launcher mpirun \\
        -- allgather -b 1K -e 16M -f 4 --json ag.json --plot ag.png

(launch/vcluster with mpirun --bind-to none --mca mpi_yield_when_idle 1 --mca
threads_pthreads_yield_strategy nanosleep: on an oversubscribed host ranks waiting in MPI must sleep)

or on one host with emulated nodes: MULTIWRITE_RANKS_PER_NODE=4 mpirun -n 8 python -m multiwrite.bench
allgather (torchrun works too; MPI's own Allgather is then left out).

Sizes (-b/-e/-f) are bytes per rank (c); every rank contributes c bytes and receives P*c. Each
iteration uses new data (a per-iteration key XORed into a per-rank random buffer); the output is
poisoned before each call and compared, element by element, with the concatenation each rank
computes locally from the seeds. Columns: nccl-tests' ``size count type | time(us) algbw busbw
#wrong`` (algbw = P*c / time, busbw = algbw * (P-1)/P), then ``inter-node B/op`` (bytes leaving the
busiest node per call: multiwrite from mw.stats(), headers included; MPI/Gloo choose their own
algorithms, so blank — see ``wire B/op`` on a vcluster: the node's eth0 transmit bytes, headers, ACKs and
two barriers included), ``dedup`` (direct unicast bytes L*(P-L)*c / these bytes), ``bound(us)`` (the
busiest node link must carry max(L*(N-1)*c out, (P-L)*c in) bytes at the link rate, plus one
node-to-node latency), ``time/bound`` and ``vs best base`` (time / the faster of MPI and Gloo).
"""
import numpy as np
import torch

from .._util import format_size
from .bound import bound_us, link_params
from .checks import count_wrong_elements
from .harness import DataImpl, MWImpl, Progress, available_impls, run_interleaved, run_main
from .options import DTYPES, add_common_arguments, check_common_args, element_size, sizes_from_args
from .report import header_lines, make_rows, run_metadata

DEFAULT_MIN, DEFAULT_MAX = 4 << 10, 4 << 20


def add_arguments(parser, name="allgather"):
    add_common_arguments(parser, sizes_help="bytes per rank, smallest size (default 4K; 1K, 64K, 1M ...)")
    parser.set_defaults(_default_sizes=(DEFAULT_MIN, DEFAULT_MAX))


class _Data:
    """The data of one size, the same for every implementation: rank s's chunk in iteration it is
    ``base[s] ^ key(s, it)``; ``expected`` is the concatenation, computed locally."""

    def __init__(self, ctx, c, dtype, seed):
        P, me = ctx.size, ctx.rank
        self.c, self.P, self.me = c, P, me
        self.esize = torch.empty(0, dtype=dtype).element_size()
        self.base = np.empty((P, c), dtype=np.uint8)
        for s in range(P):
            self.base[s] = np.random.default_rng([seed, s, c]).integers(0, 256, c, dtype=np.uint8)
        self.x = torch.empty(c // self.esize, dtype=dtype)
        self.out = torch.empty(P * (c // self.esize), dtype=dtype)
        self.x_bytes = self.x.view(torch.uint8).numpy()
        self.out_bytes = self.out.view(torch.uint8).numpy()
        self.expected = np.empty(P * c, dtype=np.uint8)
        self.it = None

    @staticmethod
    def key(s, it):
        return (17 * it + 31 * s + 1) & 0xFF

    def iteration(self, it):
        if it == self.it:
            return
        self.it = it
        exp = self.expected.reshape(self.P, self.c)
        for s in range(self.P):
            np.bitwise_xor(self.base[s], self.key(s, it), out=exp[s])
        self.x_bytes[:] = exp[self.me]

    def poison(self):
        np.bitwise_xor(self.expected, 0xFF, out=self.out_bytes)   # every element wrong until written

    def wrong(self):
        return count_wrong_elements(self.out_bytes, self.expected, self.esize)


class MPIAllgather(DataImpl):
    name = "mpi"

    def run(self):
        MPI = self.ctx.MPI
        self.ctx.comm.Allgather([self.data.x_bytes, MPI.BYTE], [self.data.out_bytes, MPI.BYTE])


class GlooAllgather(DataImpl):
    name = "gloo"

    def run(self):
        import torch.distributed as dist
        dist.all_gather_single(self.data.out, self.data.x, group=self.ctx.gloo)


class MWAllgather(DataImpl, MWImpl):
    def __init__(self, ctx, data, mode):
        super().__init__(ctx, data)
        self.name = self.mode = mode

    def run(self):
        import multiwrite as mw
        mw.all_gather(self.data.out, self.data.x, mode=self.mode)


def _impls(ctx, names, data):
    out = []
    for n in names:
        if n == "mpi":
            out.append(MPIAllgather(ctx, data))
        elif n == "gloo":
            out.append(GlooAllgather(ctx, data))
        else:
            out.append(MWAllgather(ctx, data, n))
    return out


def bench(ctx, args, sizes=None):
    """Run the AllGather sweep; returns the benchmark document (rows + metadata)."""
    names = available_impls(ctx, check_common_args(args))
    dtype = DTYPES[args.dtype]
    esize = element_size(args.dtype)
    if sizes is None:
        sizes = sizes_from_args(args, DEFAULT_MIN, DEFAULT_MAX)
    rate, delay_us, rate_src = link_params(args)
    topo = ctx.topo
    P, N = ctx.size, topo.num_nodes
    progress = Progress(ctx, args.quiet, "allgather")
    rows = []
    for size in sizes:
        c = (size // esize) * esize
        if c == 0:
            continue
        data = _Data(ctx, c, dtype, args.seed)
        impls = _impls(ctx, names, data)
        progress(f"size {format_size(c)} per rank: {len(impls)} implementations x "
                 f"{args.warmup_iters}+{args.iters} iterations", force=True)
        res = run_interleaved(ctx, impls, args.iters, args.warmup_iters, progress, f"{format_size(c)}:",
                              order=args.order)
        L = [len(topo.node_ranks[m]) for m in range(N)]
        egress = [L[m] * (N - 1) * c for m in range(N)]
        ingress = [(P - L[m]) * c for m in range(N)]
        bound = bound_us(egress, ingress, rate, delay_us) if N > 1 else None
        unicast_bytes = max(L[m] * (P - L[m]) * c for m in range(N))
        size_rows = make_rows(res, size=c, count=c // esize, type_name=args.dtype, bound=bound, P=P,
                          alg_bytes=P * c, bus_factor=(P - 1) / P)
        for r in size_rows:
            r["dedup_ratio"] = unicast_bytes / r["inter_node_bytes"] if r.get("inter_node_bytes") else None
            r["bytes_min_per_node"] = max(egress) if N > 1 else 0
        rows += size_rows
        del data, impls
    meta = run_metadata(ctx, args, rate, delay_us, rate_src)
    meta["dtype"] = args.dtype
    return {"benchmark": "allgather", "meta": meta, "rows": rows, "size_label": "bytes per rank (c)",
            "title": f"AllGather ({args.dtype}), {P} ranks / {N} nodes",
            "header": header_lines(ctx, "allgather", args, rate, delay_us)
            + f"\n# AllGather of {args.dtype}: size = bytes per rank c; output P*c; bound from the minimum "
              f"L*(N-1)*c bytes out of each node"}


def main(args):
    def prepare():
        check_common_args(args)
        sizes_from_args(args, DEFAULT_MIN, DEFAULT_MAX)
    return run_main(args, prepare, lambda ctx, _: [bench(ctx, args)])
