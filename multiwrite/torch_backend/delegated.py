"""The ops delegated to an internal ``ProcessGroupGloo`` built from the same store (same ranks, its own
key prefix): ``gather``, ``scatter``, ``barrier``, ``send`` / ``recv``; and the Gloo fallback of the
reductions (``gloo_allreduce``, ``gloo_allreduce_coalesced``, ``gloo_reduce``, ``gloo_reduce_scatter*``),
which native.py uses only for what multiwrite's reductions do not cover (a dtype they do not reduce,
e.g. uint16/uint32/uint64 or float8, several tensors per process in one call).

They return a Work that completes in Gloo's threads, so they overlap with computation. Non-contiguous
tensors go through a contiguous copy that is written back when the op completes.

``barrier`` stays on Gloo on purpose: ProcessGroupGloo's barrier also waits for the work still pending
in its threads (an ``isend``, ``irecv``, ``gather`` or ``scatter`` issued with ``async_op=True``), which
a barrier on multiwrite's runtime would not order with; multiwrite's own ops complete before they
return, so they need no barrier to be ordered.
"""
import contextlib

import torch
import torch.distributed as dist

from .checks import (
    check_cpu,
    check_output_input,
    check_reduce,
    check_same_dtype,
    check_world_multiple,
    op_name,
    reduce_scatter_lists,
)
from .work import Work, has_future


class Contig:
    """Contiguous stand-ins for tensors; ``write_back()`` copies results into non-contiguous outputs."""

    def __init__(self):
        self.pairs = []

    def __call__(self, t, output=False):
        if t.is_contiguous():
            return t
        c = t.contiguous()
        if output:
            self.pairs.append((t, c))
        return c

    def write_back(self):
        with torch.no_grad():
            for t, c in self.pairs:
                t.copy_(c)

    @property
    def needed(self):
        return bool(self.pairs)


@contextlib.contextmanager
def gloo_errors(what, dtype=None):
    """Gloo rejects some combinations synchronously: re-raise naming the op and dtype."""
    try:
        yield
    except RuntimeError as exc:
        kind = f" of {dtype}" if dtype is not None else ""
        raise RuntimeError(f"multiwrite backend: {what}{kind} (delegated to Gloo) failed: {exc}") from exc


class DelegatedOps:
    """Mixin of ProcessGroupMultiwrite: the ops above, on ``self.gloo`` (``self._size``: the group's
    size). The reductions are the ``gloo_*`` fallbacks that native.py calls."""

    def _delegate(self, inners, contig, result):
        # Always wrapped: one behaviour for every op (is_completed() is true once the future is,
        # get_future() exists even where Gloo has none, non-contiguous outputs are written back).
        inners = inners if isinstance(inners, (list, tuple)) else [inners]
        return Work(inners, contig.write_back if contig.needed else None, result)

    def _reduce_in_place(self, what, label, tensors, opts, gloo_op, coalesced=False):
        """all_reduce (+ coalesced: tensors of one dtype, maybe none) / reduce: every tensor is input
        and output."""
        check_cpu(what, *tensors)
        if coalesced:
            check_same_dtype(what, tensors)
        for t in tensors:
            check_reduce(what, opts.reduceOp, t.dtype)
        c = Contig()
        work = [c(t, output=True) for t in tensors]
        with gloo_errors(label, None if coalesced and not tensors else tensors[0].dtype):
            inner = gloo_op(work, opts)
        return self._delegate(inner, c, tensors)

    def gloo_allreduce(self, tensors, opts=None):
        opts = opts or dist.AllreduceOptions()
        return self._reduce_in_place("all_reduce", f"all_reduce (ReduceOp.{op_name(opts.reduceOp)})", tensors,
                                     opts, self.gloo.allreduce)

    def gloo_allreduce_coalesced(self, tensors, opts=None):
        opts = opts or dist.AllreduceCoalescedOptions()
        return self._reduce_in_place("all_reduce_coalesced", "all_reduce_coalesced", tensors, opts,
                                     self.gloo.allreduce_coalesced, coalesced=True)

    def gloo_reduce(self, tensors, opts=None):
        opts = opts or dist.ReduceOptions()
        return self._reduce_in_place("reduce", f"reduce (ReduceOp.{op_name(opts.reduceOp)})", tensors, opts,
                                     self.gloo.reduce)

    def gloo_reduce_scatter_single(self, output, input, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        what = "reduce_scatter_tensor"
        check_output_input(what, output, input)
        check_world_multiple(what, "input", input, output, self._size)
        check_reduce(what, opts.reduceOp, input.dtype)
        c = Contig()
        o, i = c(output, output=True), c(input)
        with gloo_errors(f"{what} (ReduceOp.{op_name(opts.reduceOp)})", input.dtype):
            inner = self.gloo._reduce_scatter_base(o, i, opts)
        return self._delegate(inner, c, [output])

    def gloo_reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        works = [self.gloo_reduce_scatter_single(o, i, opts) for o, i in zip(outputs, inputs)]
        return Work(works, None, list(outputs), has_futures=all(has_future(w) for w in works))

    def gloo_reduce_scatter(self, outputs, input_lists, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        what = "reduce_scatter"
        out, ins = reduce_scatter_lists(what, outputs, input_lists, self._size, opts.reduceOp)
        c = Contig()
        o = c(out, output=True)
        with gloo_errors(f"{what} (ReduceOp.{op_name(opts.reduceOp)})", out.dtype):
            inner = self.gloo.reduce_scatter([o], [[c(t) for t in ins]], opts)
        return self._delegate(inner, c, [out])

    def _rooted(self, what, flat, lists, opts, gloo_op, gather):
        """gather (``lists``: the root's outputs, ``flat``: the inputs) or scatter (``lists``: the
        root's inputs, ``flat``: the outputs)."""
        nested = [t for lst in lists for t in lst]
        check_cpu(what, *flat, *nested)
        check_same_dtype(what, list(flat) + nested)
        c = Contig()
        lists_c = [[c(t, output=gather) for t in lst] for lst in lists]
        flat_c = [c(t, output=not gather) for t in flat]
        with gloo_errors(what, flat[0].dtype if flat else None):
            inner = gloo_op(lists_c, flat_c, opts) if gather else gloo_op(flat_c, lists_c, opts)
        return self._delegate(inner, c, lists if gather else flat)

    def gather(self, output_lists, input_list, opts=None):
        return self._rooted("gather", input_list, output_lists, opts or dist.GatherOptions(), self.gloo.gather,
                            gather=True)

    def scatter(self, output_list, input_lists, opts=None):
        return self._rooted("scatter", output_list, input_lists, opts or dist.ScatterOptions(), self.gloo.scatter,
                            gather=False)

    def barrier(self, opts=None):
        opts = opts or dist.BarrierOptions()
        with gloo_errors("barrier"):
            return Work([self.gloo.barrier(opts)], None, [])

    def _point_to_point(self, what, label, tensors, receive, gloo_op):
        check_cpu(what, *tensors)
        c = Contig()
        work = [c(t, output=receive) for t in tensors]
        with gloo_errors(label, tensors[0].dtype):
            inner = gloo_op(work)       # Gloo's work keeps the contiguous copy alive
        return Work([inner], c.write_back if receive else None, tensors, has_futures=False)

    def send(self, tensors, dst, tag=0):
        return self._point_to_point("send", "send", tensors, False, lambda work: self.gloo.send(work, dst, tag))

    def recv(self, tensors, src, tag=0):
        return self._point_to_point("recv", "recv", tensors, True, lambda work: self.gloo.recv(work, src, tag))

    def recv_anysource(self, tensors, tag=0):
        return self._point_to_point("recv", "recv (any source)", tensors, True,
                                    lambda work: self.gloo.recv_anysource(work, tag))
