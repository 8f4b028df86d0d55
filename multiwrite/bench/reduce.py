"""AllReduce and ReduceScatter: MPI Allreduce / Reduce_scatter_block, Gloo all_reduce /
reduce_scatter_tensor and multiwrite's node-first reductions (mw.all_reduce / mw.reduce_scatter),
interleaved, SUM.

Run it SPMD under a launcher, for example on one host with 2 emulated nodes of 2 ranks:

    MULTIWRITE_RANKS_PER_NODE=2 mpirun -n 4 python -m multiwrite.bench reduce -b 1M -e 64M -f 4

or on a virtual cluster (scripts/bench_vcluster.sh ... -- reduce -b 1M -e 64M); torchrun works too
(MPI's own collectives are then left out).

Sizes (-b/-e/-f) are the buffer B in bytes: all_reduce reduces B bytes per rank in place;
reduce_scatter reduces an input of B bytes per rank into B/P bytes per rank. -d float32 (default),
float64, bfloat16, float16 (MPI only for float32/float64), int32/int64. The data are small integers
(rank r's element = base + r + a per-iteration key), so every implementation's sum is exact in any
order and each result is compared bitwise with the reference each rank computes locally (#wrong).
Columns as in the other benchmarks (``--help`` of allgather): ``inter-node B/op`` (multiwrite: from
mw.stats(), 64-byte headers included; MPI/Gloo choose their own algorithms: blank), ``bound(us)``
(every node must send and receive at least 2·(N−1)/N·B for all_reduce and (N−1)/N·B for
reduce_scatter without in-network reduction, at the link rate, plus one node-to-node latency; blank
without --rate or a vcluster), ``time/bound`` and ``vs best base`` (time / the faster of MPI and Gloo).
"""
import sys

import torch

from .._util import format_size
from .bound import bound_us, link_params
from .checks import count_wrong_elements
from .harness import DataImpl, MWImpl, Progress, available_impls, run_interleaved, run_main
from .options import (DTYPES, add_common_arguments, check_common_args, element_size, parse_choices,
                      sizes_from_args)
from .report import header_lines, make_rows, run_metadata

DEFAULT_MIN, DEFAULT_MAX = 1 << 20, 64 << 20
COLLECTIVES = ("allreduce", "reducescatter")
_MPI_TYPES = {"float32": "FLOAT", "float": "FLOAT", "fp32": "FLOAT", "float64": "DOUBLE", "double": "DOUBLE",
              "int32": "INT32_T", "int64": "INT64_T"}

DOCS = {"reduce": __doc__}


def add_arguments(parser, name="reduce"):
    add_common_arguments(parser, sizes_help="buffer bytes per rank, smallest size (default 1M; 64K, 4M ...)")
    parser.add_argument("--collectives", default=",".join(COLLECTIVES),
                        help="comma-separated, in this order: allreduce, reducescatter (default %(default)s)")
    parser.set_defaults(_default_sizes=(DEFAULT_MIN, DEFAULT_MAX), dtype="float32", impls="mpi,gloo,multiwrite")


def _collectives(args):
    return parse_choices("--collectives", args.collectives, COLLECTIVES)


def _impl_names(ctx, args):
    names = available_impls(ctx, check_common_args(args))
    if "unicast" in names:
        if ctx.rank == 0:
            print("# note: the reductions have no unicast mode: 'unicast' is left out", file=sys.stderr)
        names = [n for n in names if n != "unicast"]
    if "mpi" in names and args.dtype not in _MPI_TYPES:
        if ctx.rank == 0:
            print(f"# note: MPI has no {args.dtype} reduction: MPI is left out", file=sys.stderr)
        names = [n for n in names if n != "mpi"]
    return names


class _Data:
    """The data of one (collective, size): rank r's input in iteration ``it`` is base + r + key(it)
    (small integers: exact sums in any order); ``expected`` is this rank's part of the sum, computed
    locally. All-reduce: in place on ``x`` (n elements); reduce-scatter: ``x`` (n) -> ``out`` (n / P)."""

    def __init__(self, ctx, coll, n, dtype, seed):
        P, me = ctx.size, ctx.rank
        self.coll, self.n, self.P, self.me = coll, n, P, me
        g = torch.Generator().manual_seed(seed * 1000003 + n)
        self.base = torch.randint(-8, 9, (n,), generator=g).to(dtype)
        self.x = torch.empty(n, dtype=dtype)
        c = n // P if coll == "reducescatter" else n
        self.out = self.x if coll == "allreduce" else torch.empty(c, dtype=dtype)
        self.expected = torch.empty(c, dtype=dtype)
        self.c = c
        self.it = None

    @staticmethod
    def key(it):
        return (it * 5) % 8

    def iteration(self, it):
        self.x.copy_(self.base).add_(self.me + self.key(it))
        if it == self.it:
            return
        self.it = it
        lo = self.me * self.c if self.coll == "reducescatter" else 0
        shift = self.P * (self.P - 1) // 2 + self.P * self.key(it)
        torch.mul(self.base[lo:lo + self.c], self.P, out=self.expected).add_(shift)

    def poison(self):
        if self.coll == "reducescatter":
            self.out.fill_(-1000)

    def wrong(self):
        return count_wrong_elements(self.out, self.expected, self.out.element_size())


class MPIReduce(DataImpl):
    name = "mpi"

    def __init__(self, ctx, data, mpi_type):
        super().__init__(ctx, data)
        self.type = getattr(ctx.MPI, mpi_type)
        self.x = data.x.numpy()
        self.out = data.out.numpy()

    def run(self):
        MPI = self.ctx.MPI
        if self.data.coll == "allreduce":
            self.ctx.comm.Allreduce(MPI.IN_PLACE, [self.x, self.type], op=MPI.SUM)
        else:
            self.ctx.comm.Reduce_scatter_block([self.x, self.type], [self.out, self.type], op=MPI.SUM)


class GlooReduce(DataImpl):
    name = "gloo"

    def run(self):
        import torch.distributed as dist
        if self.data.coll == "allreduce":
            dist.all_reduce(self.data.x, group=self.ctx.gloo)
        else:
            dist.reduce_scatter_single(self.data.out, self.data.x, group=self.ctx.gloo)


class MWReduce(DataImpl, MWImpl):
    name = "multiwrite"

    def run(self):
        import multiwrite as mw
        if self.data.coll == "allreduce":
            mw.all_reduce(self.data.x)
        else:
            mw.reduce_scatter(self.data.out, self.data.x)


def _impls(ctx, names, data, args):
    out = []
    for n in names:
        if n == "mpi":
            out.append(MPIReduce(ctx, data, _MPI_TYPES[args.dtype]))
        elif n == "gloo":
            out.append(GlooReduce(ctx, data))
        else:
            out.append(MWReduce(ctx, data))
    return out


def bench(ctx, args, coll, sizes):
    """One collective's sweep; returns its benchmark document (rows + metadata)."""
    names = _impl_names(ctx, args)
    dtype = DTYPES[args.dtype]
    esize = element_size(args.dtype)
    rate, delay_us, rate_src = link_params(args)
    topo = ctx.topo
    P, N = ctx.size, topo.num_nodes
    label = "all_reduce" if coll == "allreduce" else "reduce_scatter"
    progress = Progress(ctx, args.quiet, label)
    rows = []
    for size in sizes:
        n = size // esize // P * P          # a multiple of P elements (reduce_scatter's chunks)
        if n == 0:
            continue
        B = n * esize
        data = _Data(ctx, coll, n, dtype, args.seed)
        impls = _impls(ctx, names, data, args)
        progress(f"{label} of {format_size(B)}: {len(impls)} implementations x {args.warmup_iters}+{args.iters} "
                 f"iterations", force=True)
        res = run_interleaved(ctx, impls, args.iters, args.warmup_iters, progress, f"{format_size(B)}:",
                              order=args.order)
        # bytes every node must send (and receive) without in-network reduction
        need = (2 if coll == "allreduce" else 1) * (N - 1) * B // N
        bound = bound_us([need] * N, [need] * N, rate, delay_us) if N > 1 else None
        bus = 2 * (P - 1) / P if coll == "allreduce" else (P - 1) / P
        rows += make_rows(res, size=B, count=n, type_name=args.dtype, bound=bound, P=P,
                          alg_bytes=B, bus_factor=bus)
        for r in rows[-len(impls):]:
            r["bytes_min_per_node"] = need if N > 1 else 0
        del data, impls
    meta = run_metadata(ctx, args, rate, delay_us, rate_src)
    meta["dtype"] = args.dtype
    meta["collective"] = label
    return {"benchmark": label, "meta": meta, "rows": rows, "size_label": "buffer bytes per rank (B)",
            "title": f"{label} ({args.dtype}, SUM), {P} ranks / {N} nodes",
            "header": header_lines(ctx, label, args, rate, delay_us)
            + f"\n# {label} of {args.dtype}, SUM: size = buffer bytes per rank B"
            + (" (input; output B/P)" if coll == "reducescatter" else " (in place)")
            + f"; bound from the minimum {'2·' if coll == 'allreduce' else ''}(N-1)/N·B bytes in and out of each node"}


def main(args):
    def prepare():
        check_common_args(args)
        colls = _collectives(args)
        return colls, sizes_from_args(args, DEFAULT_MIN, DEFAULT_MAX)
    return run_main(args, prepare, lambda ctx, p: [bench(ctx, args, coll, p[1]) for coll in p[0]])
