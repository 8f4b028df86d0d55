"""Autograd-aware MoE dispatch/combine: each is the other's backward.

    recv_x, recv_topk_idx, recv_topk_weights, counts, handle = mw.moe.dispatch(x, topk_idx, topk_weights, E)
    y = mw.moe.combine(expert_out, handle)

dispatch backward: the gradient of recv_x is combined back to the source tokens (a combine), and the
gradient of recv_topk_weights flows back to topk_weights (each (token, slot) from the rank owning that
slot's expert). combine backward: the output gradient is dispatched again with the cached layout.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import combine as _combine
from . import dispatch as _dispatch
from .common import FLOAT_DTYPES

if TYPE_CHECKING:
    from ...runtime.group import Group
    from .dispatch import DispatchHandle


class _Dispatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, topk_weights, topk_idx, num_experts, group, mode):
        recv_x, recv_idx, recv_w, counts, handle = _dispatch.dispatch(
            x, topk_idx, topk_weights, num_experts, group=group, mode=mode)
        ctx.handle = handle
        ctx.mark_non_differentiable(recv_idx)
        return recv_x, recv_idx, recv_w, handle

    @staticmethod
    def backward(ctx, grad_recv_x, _grad_idx, grad_recv_w, _grad_handle):
        handle = ctx.handle
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            if grad_recv_x is None:
                grad_recv_x = torch.zeros((handle.num_recv_tokens, handle.hidden_bytes // handle.dtype.itemsize),
                                          dtype=handle.dtype)
            grad_x = _combine.combine(grad_recv_x.contiguous(), handle, group=handle.group)
        if ctx.needs_input_grad[1]:
            if grad_recv_w is None:
                grad_recv_w = torch.zeros((handle.num_recv_tokens, handle.num_topk), dtype=torch.float32)
            # Only the rank owning a slot's expert contributes that slot's gradient.
            masked = torch.where(handle.recv_topk_idx >= 0, grad_recv_w, torch.zeros_like(grad_recv_w))
            grad_w = _combine.combine(masked.contiguous(), handle, group=handle.group)
        return grad_x, grad_w, None, None, None, None


class _Combine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, handle):
        ctx.handle = handle
        return _combine.combine(y, handle, group=handle.group)

    @staticmethod
    def backward(ctx, grad_out):
        handle = ctx.handle
        grad_y = _dispatch.dispatch(grad_out.contiguous().to(handle.dtype) if grad_out.dtype not in
                                    FLOAT_DTYPES else grad_out.contiguous(),
                                    handle=handle, group=handle.group)[0]
        return grad_y, None


def dispatch(x: torch.Tensor, topk_idx: torch.Tensor, topk_weights: torch.Tensor | None, num_experts: int, *,
             group: Group | None = None, mode: str | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], DispatchHandle]:
    """Differentiable dispatch (w.r.t. x and topk_weights). Shapes as in
    :func:`multiwrite.ops.moe.dispatch.dispatch`; returns (recv_x, recv_topk_idx, recv_topk_weights,
    num_recv_tokens_per_expert, handle)."""
    if topk_weights is None:
        topk_weights = torch.zeros(topk_idx.shape, dtype=torch.float32)
    recv_x, recv_idx, recv_w, handle = _Dispatch.apply(x, topk_weights, topk_idx, num_experts, group, mode)
    return recv_x, recv_idx, recv_w, handle.num_recv_tokens_per_expert, handle


def combine(y: torch.Tensor, handle: DispatchHandle) -> torch.Tensor:
    """Differentiable combine: y [R, H'] -> [T, H'] summed per source token."""
    return _Combine.apply(y, handle)
