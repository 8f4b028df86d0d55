"""The MoE communication Buffer (DeepEP-style API) over multiwrite's dispatch and combine.

The Buffer's dispatch and combine are not recorded by autograd (as DeepEP's are not): called with
tensors that require grad while grad mode is on, they raise instead of silently returning results
without a gradient path; the autograd versions are ``mw.moe.dispatch`` / ``mw.moe.combine``
(ops/moe/autograd.py). Under ``torch.no_grad()`` (or inside a custom autograd.Function's forward) they
run as usual.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import combine as _combine
from . import dispatch as _dispatch
from ..._config import check_mode
from ...runtime.group import resolve

if TYPE_CHECKING:
    import torch

    from ...runtime.group import Group
    from .dispatch import DispatchHandle


def _refuse_grad(what: str, autograd_call: str, **tensors: Any) -> None:
    """Raise when a tensor requires grad under grad mode: the Buffer's ops are invisible to autograd."""
    import torch
    if not torch.is_grad_enabled():
        return
    needing = [name for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    if needing:
        raise RuntimeError(
            f"mw.Buffer.{what}: {' and '.join(needing)} require{'s' if len(needing) == 1 else ''} grad, but "
            f"Buffer.{what} is not recorded by autograd (no gradient would flow back). Use the autograd "
            f"version {autograd_call} (multiwrite/ops/moe/autograd.py), or call Buffer.{what} under "
            f"torch.no_grad() / with detached tensors if no gradient is needed")


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

    def __init__(self, group: Any = None, *, mode: str | None = None) -> None:
        self.group = _resolve_any(group)
        self.mode = self.group.mode if mode is None else check_mode(mode)

    def get_dispatch_layout(self, topk_idx: torch.Tensor, num_experts: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """topk_idx int64 [T, k] -> (num_tokens_per_rank int64 [P], num_tokens_per_node int64 [N],
        num_tokens_per_expert int64 [E], is_token_in_rank bool [T, P])."""
        return _dispatch.get_dispatch_layout(topk_idx, num_experts, group=self.group)

    def dispatch(self, x: torch.Tensor, topk_idx: torch.Tensor | None = None,
                 topk_weights: torch.Tensor | None = None, num_experts: int | None = None, *,
                 handle: DispatchHandle | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], DispatchHandle]:
        """See :func:`multiwrite.ops.moe.dispatch.dispatch`: returns (recv_x [R, H], recv_topk_idx int64 [R, k],
        recv_topk_weights float32 [R, k], num_recv_tokens_per_expert list[int], handle).

        Not recorded by autograd: raises RuntimeError if ``x`` or ``topk_weights`` requires grad while
        grad mode is on (use ``mw.moe.dispatch``)."""
        _refuse_grad("dispatch", "mw.moe.dispatch(x, topk_idx, topk_weights, num_experts, group=...)",
                     x=x, topk_weights=topk_weights)
        return _dispatch.dispatch(x, topk_idx, topk_weights, num_experts, handle=handle, group=self.group,
                                  mode=self.mode)

    def get_combine_buffer(self, handle: DispatchHandle, hidden: int | None = None,
                           dtype: torch.dtype | None = None) -> torch.Tensor:
        """See :func:`multiwrite.ops.moe.combine.get_combine_buffer`: the [R, hidden] tensor to write expert
        outputs into for the next ``combine`` (zero-copy in MultiWrite mode; node-collective)."""
        return _combine.get_combine_buffer(handle, hidden, dtype, group=self.group)

    def combine(self, y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
        """y [R, H'] (rows of ``dispatch``'s recv_x order) -> [T, H'] summed on the source rank.

        Not recorded by autograd: raises RuntimeError if ``y`` requires grad while grad mode is on (use
        ``mw.moe.combine``)."""
        _refuse_grad("combine", "mw.moe.combine(y, handle)", y=y)
        return _combine.combine(y, handle, group=self.group)


def _resolve_any(group: Any) -> Group:
    if group is not None and not hasattr(group, "topo"):
        from ...backend import group_of
        group = group_of(group)
    return resolve(group)
