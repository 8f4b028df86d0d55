"""``mw.moe``: MoE dispatch and combine under autograd (each is the other's backward); see
multiwrite/ops/moe/autograd.py."""
from .ops.moe.autograd import combine, dispatch

__all__ = ["dispatch", "combine"]
