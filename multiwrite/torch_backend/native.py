"""The ops that run on multiwrite's own operators (the group's transport and node shared memory).

* on MultiWrite (one copy per receiving node, replicated through the node's shared memory):
  ``all_gather_into_tensor`` / ``all_gather_single`` / ``_all_gather_base``, ``all_gather`` (uneven
  sizes too, padded to the largest), ``broadcast`` (and everything built on them, e.g.
  ``all_gather_object``, ``broadcast_object_list``, DDP's initial parameter broadcast, FSDP's parameter
  all-gathers);
* on the multiwrite runtime without replication (nothing to deduplicate: every chunk has one
  destination): ``all_to_all_single`` (equal and uneven splits) and ``all_to_all`` (uneven sizes too,
  through one ``all_to_all_single``) -- ops/alltoall.py, shared memory inside a node;
* the reductions, node first (ops/reduce.py: a node's ranks reduce in shared memory, then the ranks
  of one rail reduce-scatter and all-gather across nodes): ``all_reduce``, ``all_reduce_coalesced``
  (the tensors flattened into one call), ``reduce`` (an all_reduce that only the root copies out),
  ``reduce_scatter_tensor`` / ``_reduce_scatter_base`` (+ coalesced) and ``reduce_scatter`` (tensor
  lists, concatenated). Results are bitwise identical on every rank and from run to run; floating
  sums differ from Gloo's only by rounding (another summation order). Ranks that disagree on sizes,
  dtypes or the ReduceOp get a MismatchError on every rank. What ops/reduce.py does not cover falls
  back to Gloo (delegated.py's ``gloo_*``): a dtype it does not reduce (uint16/32/64, float8), several
  tensors per process in one all_reduce/reduce call.

They complete before they return (their Work is already done): the reductions too, so DDP's gradient
all-reduce does not overlap the backward pass (the Gloo fallback's Work still completes in Gloo's
threads).
"""
import torch
import torch.distributed as dist

from .checks import (
    check_cpu,
    check_output_input,
    check_reduce,
    check_same_dtype,
    check_world_multiple,
    reduce_scatter_lists,
)
from .work import completed


def native_reductions(topo, choice):
    """Whether the group's reductions run on ops/reduce.py (MULTIWRITE_REDUCE, see _config.reduce_choice):
    under 'auto' not when every node has one rank and there are more than two nodes (Gloo's ring is
    faster there). Same answer on every rank: the topology and the setting are agreed at start-up."""
    if choice != "auto":
        return choice == "native"
    return not (topo.num_nodes > 2 and topo.num_nodes == topo.world_size)


def _covered(what, tensors, op, native=True):
    """Whether ops/reduce.py reduces these tensors with ``op`` (else the Gloo fallback runs); a TypeError
    for an op it does not define for their dtype (complex PRODUCT/MIN/MAX)."""
    from ..ops.reduce import covers
    return all(covers(t.dtype, op, f"multiwrite backend: {what}") for t in tensors) and native


def _unflatten_into(flat, tensors):
    """Copy consecutive pieces of the 1-D ``flat`` back into ``tensors`` (their shapes, in order)."""
    with torch.no_grad():
        off = 0
        for t in tensors:
            t.copy_(flat[off:off + t.numel()].view(t.shape))
            off += t.numel()


class NativeOps:
    """Mixin of ProcessGroupMultiwrite: the ops above, on ``self.mw_group`` (``self._rank``,
    ``self._size``: this rank and the group's size)."""

    # -- on MultiWrite ----------------------------------------------------------------------------
    def all_gather_single(self, output, input, opts=None):
        from ..ops.allgather import all_gather
        what = "all_gather_into_tensor"
        check_output_input(what, output, input)
        check_world_multiple(what, "output", output, input, self._size)
        all_gather(output, input, group=self.mw_group)
        return completed([output])

    def _allgather_base(self, output, input, opts=None):
        return self.all_gather_single(output, input, opts)

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        for o, i in zip(outputs, inputs):
            self.all_gather_single(o, i, opts)
        return completed(list(outputs))

    def all_gather_single_coalesced(self, outputs, inputs, opts=None):
        return self.allgather_into_tensor_coalesced(outputs, inputs, opts)

    def allgather(self, output_lists, input_list, opts=None):
        from ..ops.allgather import all_gather
        what = "all_gather"
        if len(input_list) != 1 or len(output_lists) != 1:
            raise ValueError(f"multiwrite backend: {what} takes one input tensor and one output list per "
                             f"process (got {len(input_list)} inputs, {len(output_lists)} output lists)")
        x, outs = input_list[0], list(output_lists[0])
        check_cpu(what, x, *outs)
        if len(outs) != self._size:
            raise ValueError(f"multiwrite backend: {what}: output list has {len(outs)} tensors, "
                             f"world size is {self._size}")
        check_same_dtype(what, [x] + outs)
        if outs[self._rank].numel() != x.numel():
            raise ValueError(f"multiwrite backend: {what}: this rank's output slot has "
                             f"{outs[self._rank].numel()} elements, its input has {x.numel()}")
        n = max(o.numel() for o in outs)
        src = x.reshape(-1)
        if x.numel() != n:           # uneven sizes: every chunk padded to the largest
            src = torch.zeros(n, dtype=x.dtype)
            src[:x.numel()] = x.reshape(-1)
        gathered = torch.empty(self._size * n, dtype=x.dtype)
        all_gather(gathered, src, group=self.mw_group)
        with torch.no_grad():
            for r, o in enumerate(outs):
                o.copy_(gathered[r * n:r * n + o.numel()].view(o.shape))
        return completed(output_lists)

    def allgather_coalesced(self, output_lists, input_list, opts=None):
        for outs, x in zip(output_lists, input_list):
            self.allgather([outs], [x], opts)
        return completed(output_lists)

    def broadcast(self, tensors, opts=None):
        from ..ops.broadcast import broadcast
        root = opts.rootRank if opts is not None else 0
        index = opts.rootTensor if opts is not None else 0
        check_cpu("broadcast", *tensors)
        broadcast(tensors[index], root, group=self.mw_group)
        with torch.no_grad():
            for i, t in enumerate(tensors):
                if i != index:
                    t.copy_(tensors[index])
        return completed(tensors)

    # -- on the runtime, one copy per destination rank ----------------------------------------------
    def _check_splits(self, what, name, t, splits):
        splits = list(splits or [])
        if splits:
            if len(splits) != self._size or any(s < 0 for s in splits):
                raise ValueError(f"multiwrite backend: {what}: {name}_split_sizes must have "
                                 f"{self._size} non-negative entries, got {splits}")
            if sum(splits) != (t.size(0) if t.dim() else 1):
                raise ValueError(f"multiwrite backend: {what}: {name}_split_sizes sum to "
                                 f"{sum(splits)}, but the {name} has {t.size(0)} rows")
        elif t.dim() == 0 or t.size(0) % self._size:
            raise ValueError(f"multiwrite backend: {what}: the {name}'s first dimension "
                             f"({t.size(0) if t.dim() else 'scalar'}) is not divisible by the "
                             f"world size ({self._size}); pass split sizes")

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        opts = opts or dist.AllToAllOptions()
        what = "all_to_all_single"
        check_output_input(what, output, input)
        self._check_splits(what, "input", input, input_split_sizes)
        self._check_splits(what, "output", output, output_split_sizes)
        from ..ops.alltoall import all_to_all_single
        all_to_all_single(output, input, list(output_split_sizes or []) or None,
                          list(input_split_sizes or []) or None, group=self.mw_group)
        return completed([output])

    def alltoall_base(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        return self.all_to_all_single(output, input, output_split_sizes, input_split_sizes, opts)

    def alltoall(self, outputs, inputs, opts=None):
        what = "all_to_all"
        outputs, inputs = list(outputs), list(inputs)
        if len(outputs) != self._size or len(inputs) != self._size:
            raise ValueError(f"multiwrite backend: {what} needs {self._size} input and output tensors, "
                             f"got {len(inputs)} and {len(outputs)}")
        check_cpu(what, *outputs, *inputs)
        check_same_dtype(what, outputs + inputs)
        flat_in = torch.cat([t.reshape(-1) for t in inputs]) if inputs else torch.empty(0)
        flat_out = torch.empty(sum(t.numel() for t in outputs), dtype=outputs[0].dtype)
        in_splits = [t.numel() for t in inputs]
        out_splits = [t.numel() for t in outputs]

        from ..ops.alltoall import all_to_all_single
        all_to_all_single(flat_out, flat_in, out_splits, in_splits, group=self.mw_group)
        _unflatten_into(flat_out, outputs)
        return completed(outputs)

    # -- reductions, node first (ops/reduce.py) ------------------------------------------------------
    @property
    def _native_reduce(self):
        native = getattr(self, "_native_reduce_cached", None)
        if native is None:
            from .. import _config
            native = self._native_reduce_cached = native_reductions(self.mw_group.topo, _config.reduce_choice())
        return native

    def allreduce(self, tensors, opts=None):
        opts = opts or dist.AllreduceOptions()
        what = "all_reduce"
        check_cpu(what, *tensors)
        for t in tensors:
            check_reduce(what, opts.reduceOp, t.dtype)
        if len(tensors) != 1 or not _covered(what, tensors, opts.reduceOp, self._native_reduce):
            return self.gloo_allreduce(tensors, opts)
        from ..ops.reduce import all_reduce
        all_reduce(tensors[0], opts.reduceOp, group=self.mw_group)
        return completed(tensors)

    def allreduce_coalesced(self, tensors, opts=None):
        opts = opts or dist.AllreduceCoalescedOptions()
        what = "all_reduce_coalesced"
        tensors = list(tensors)
        check_cpu(what, *tensors)
        check_same_dtype(what, tensors)
        for t in tensors:
            check_reduce(what, opts.reduceOp, t.dtype)
        if not tensors or not _covered(what, tensors, opts.reduceOp, self._native_reduce):
            return self.gloo_allreduce_coalesced(tensors, opts)
        from ..ops.reduce import all_reduce
        # one call for all of them: the tensors flattened into one buffer
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        all_reduce(flat, opts.reduceOp, group=self.mw_group)
        _unflatten_into(flat, tensors)
        return completed(tensors)

    def reduce(self, tensors, opts=None):
        opts = opts or dist.ReduceOptions()
        what = "reduce"
        check_cpu(what, *tensors)
        for t in tensors:
            check_reduce(what, opts.reduceOp, t.dtype)
        if len(tensors) != 1 or opts.rootTensor != 0 or not _covered(what, tensors, opts.reduceOp, self._native_reduce):
            return self.gloo_reduce(tensors, opts)
        from ..ops.reduce import reduce
        reduce(tensors[0], opts.rootRank, opts.reduceOp, group=self.mw_group)
        return completed(tensors)

    def reduce_scatter_single(self, output, input, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        what = "reduce_scatter_tensor"
        check_output_input(what, output, input)
        check_world_multiple(what, "input", input, output, self._size)
        check_reduce(what, opts.reduceOp, input.dtype)
        if not _covered(what, [input], opts.reduceOp, self._native_reduce):
            return self.gloo_reduce_scatter_single(output, input, opts)
        from ..ops.reduce import reduce_scatter
        reduce_scatter(output, input, opts.reduceOp, group=self.mw_group)
        return completed([output])

    def _reduce_scatter_base(self, output, input, opts=None):
        return self.reduce_scatter_single(output, input, opts)

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        outputs, inputs = list(outputs), list(inputs)
        if not _covered("reduce_scatter_tensor", inputs, (opts or dist.ReduceScatterOptions()).reduceOp,
                        self._native_reduce):
            return self.gloo_reduce_scatter_tensor_coalesced(outputs, inputs, opts)
        for o, i in zip(outputs, inputs):
            self.reduce_scatter_single(o, i, opts)
        return completed(outputs)

    def reduce_scatter_single_coalesced(self, outputs, inputs, opts=None):
        return self.reduce_scatter_tensor_coalesced(outputs, inputs, opts)

    def reduce_scatter(self, outputs, input_lists, opts=None):
        opts = opts or dist.ReduceScatterOptions()
        what = "reduce_scatter"
        out, ins = reduce_scatter_lists(what, outputs, input_lists, self._size, opts.reduceOp)
        if not _covered(what, [out], opts.reduceOp, self._native_reduce):
            return self.gloo_reduce_scatter(outputs, input_lists, opts)
        from ..ops.reduce import reduce_scatter
        reduce_scatter(out, torch.cat([t.detach().reshape(-1) for t in ins]), opts.reduceOp, group=self.mw_group)
        return completed([out])
