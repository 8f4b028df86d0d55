"""The MoE communication Buffer (DeepEP-style API) over multiwrite's dispatch and combine."""
from . import combine as _combine
from . import dispatch as _dispatch
from ..._config import check_mode
from ...runtime.group import resolve


class Buffer:
    """MoE expert-parallel communication on a group (default: the default group).

    Experts are split contiguously over the group's ranks (expert e on rank e // (E/P)).

    >>> buf = mw.Buffer()
    >>> layout = buf.get_dispatch_layout(topk_idx, num_experts)
    >>> recv_x, recv_topk_idx, recv_topk_weights, num_recv_tokens_per_expert, handle = \\
    ...     buf.dispatch(x, topk_idx, topk_weights, num_experts)
    >>> y = buf.combine(expert_out, handle)      # [T, H] back on the source rank
    >>> out = buf.get_combine_buffer(handle)     # or zero-copy: experts write into the node buffer
    >>> out.copy_(expert_out); y = buf.combine(out, handle)

    mode: None (MULTIWRITE_MODE), "multiwrite" (one copy per destination node) or "unicast" (one copy
    per destination rank). ``group`` may be a multiwrite Group or a torch ProcessGroup created with the
    "multiwrite" backend.
    """

    def __init__(self, group=None, *, mode=None):
        self.group = _resolve_any(group)
        self.mode = self.group.mode if mode is None else check_mode(mode)

    def get_dispatch_layout(self, topk_idx, num_experts):
        """topk_idx int64 [T, k] -> (num_tokens_per_rank int64 [P], num_tokens_per_node int64 [N],
        num_tokens_per_expert int64 [E], is_token_in_rank bool [T, P])."""
        return _dispatch.get_dispatch_layout(topk_idx, num_experts, group=self.group)

    def dispatch(self, x, topk_idx=None, topk_weights=None, num_experts=None, *, handle=None):
        """See :func:`multiwrite.ops.moe.dispatch.dispatch`: returns (recv_x [R, H], recv_topk_idx int64 [R, k],
        recv_topk_weights float32 [R, k], num_recv_tokens_per_expert list[int], handle)."""
        return _dispatch.dispatch(x, topk_idx, topk_weights, num_experts, handle=handle, group=self.group,
                                  mode=self.mode)

    def get_combine_buffer(self, handle, hidden=None, dtype=None):
        """See :func:`multiwrite.ops.moe.combine.get_combine_buffer`: the [R, hidden] tensor to write expert
        outputs into for the next ``combine`` (zero-copy in MultiWrite mode; node-collective)."""
        return _combine.get_combine_buffer(handle, hidden, dtype, group=self.group)

    def combine(self, y, handle):
        """y [R, H'] (rows of ``dispatch``'s recv_x order) -> [T, H'] summed on the source rank."""
        return _combine.combine(y, handle, group=self.group)


def _resolve_any(group):
    if group is not None and not hasattr(group, "topo"):
        from ...backend import group_of
        group = group_of(group)
    return resolve(group)
