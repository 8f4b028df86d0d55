"""MoE dispatch and combine: MPI Alltoallv (per-rank dedup), Gloo permute + all_to_all_single (per-expert
copies), multiwrite unicast and MultiWrite, interleaved on the same tokens and routing.

See DOCS["dispatch"] / DOCS["combine"] (the --help texts) for what is timed and checked. The workload
is in moe_workload.py, the implementations in dispatch.py and combine.py; this module runs the sweep.
"""
from .._util import format_size
from . import combine, dispatch
from .bound import bound_us, link_params
from .harness import Progress, available_impls, run_interleaved, run_main
from .moe_workload import Workload, add_workload_arguments, check_workload, token_counts
from .options import add_common_arguments, check_common_args, element_size
from .report import header_lines, make_rows, run_metadata

DOCS = {"dispatch": dispatch.DOC, "combine": combine.DOC}


def add_arguments(parser, name="dispatch"):
    add_common_arguments(parser, sizes_help="bytes of x per rank (T*H*element); overrides -T (default: from -T)")
    add_workload_arguments(parser)


def bench(ctx, args, op, tokens=None):
    """Run the dispatch or combine sweep; returns the benchmark document."""
    names = available_impls(ctx, check_common_args(args))
    check_workload(args, ctx.size)
    esize = element_size(args.dtype)
    row_bytes = args.hidden * esize
    if tokens is None:
        tokens = token_counts(args, row_bytes)
    rate, delay_us, rate_src = link_params(args)
    topo = ctx.topo
    P, N = ctx.size, topo.num_nodes
    progress = Progress(ctx, args.quiet, op)
    rows = []
    for T in tokens:
        wl = Workload(ctx, args, T)
        impls = (dispatch.impls(ctx, names, wl) if op == "dispatch" else
                 combine.impls(ctx, names, wl, args.combine_input == "zero-copy"))
        size = T * row_bytes
        progress(f"T={T} tokens per rank ({format_size(size)}): {len(impls)} implementations x "
                 f"{args.warmup_iters}+{args.iters} iterations", force=True)
        res = run_interleaved(ctx, impls, args.iters, args.warmup_iters, progress, f"T={T}:",
                              order=args.order)
        bound = bound_us(wl.dedup_egress, wl.dedup_ingress, rate, delay_us) if N > 1 else None
        extra = {}
        for name, per_node in wl.baseline_bytes[op].items():
            if name in res and N > 1:
                extra[name] = {"inter_bytes": max(per_node), "inter_bytes_per_node": per_node}
        size_rows = make_rows(res, size=size, count=T * args.hidden, type_name=args.dtype, bound=bound, P=P,
                          alg_bytes=size, bus_factor=(P - 1) / P, extra=extra)
        ref = wl.per_expert_bytes[op]
        paths = {im.name: getattr(im, "path", None) for im in impls}
        for r in size_rows:
            r["tokens"] = T
            if paths.get(r["impl"]):
                r["path"] = paths[r["impl"]]        # multiwrite: which path ran (ops/moe/low_latency.py)
            r["dedup_ratio"] = ref / r["inter_node_bytes"] if r.get("inter_node_bytes") and ref else None
            r["copies_remote"] = dict(wl.copies)
            r["bound_bytes"] = max(wl.dedup_egress + wl.dedup_ingress) if N > 1 else 0
        rows += size_rows
        for im in impls:
            im.release()
        del wl, impls
    meta = run_metadata(ctx, args, rate, delay_us, rate_src)
    meta.update(dtype=args.dtype, experts=args.experts, topk=args.topk, hidden=args.hidden, routing=args.routing,
                zipf=args.zipf if args.routing == "skewed" else None, tokens=list(tokens))
    if op == "combine":
        meta["combine_input"] = args.combine_input
    rt = f"{args.routing}" + (f" (Zipf s={args.zipf:g})" if args.routing == "skewed" else "")
    what = "MoE dispatch" if op == "dispatch" else "MoE combine"
    return {"benchmark": op, "meta": meta, "rows": rows, "size_label": f"bytes of x per rank (T x {args.hidden} x {esize} B)",
            "title": f"{what}: E={args.experts}, k={args.topk}, H={args.hidden} {args.dtype}, {rt}",
            "header": header_lines(ctx, op, args, rate, delay_us)
            + f"\n# {what}: E={args.experts} experts ({args.experts // P} per rank), top-{args.topk}, H={args.hidden}, "
              f"{args.dtype}, routing {rt}; size = T*H*element bytes per rank; bound: one row per (token, remote node)"}


def main(args):
    def prepare():
        check_common_args(args)
        token_counts(args, args.hidden * element_size(args.dtype))
    return run_main(args, prepare, lambda ctx, _: [bench(ctx, args, args.benchmark)],
                    check=lambda ctx: check_workload(args, ctx.size))
