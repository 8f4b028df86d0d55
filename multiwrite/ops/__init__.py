"""ops"""
from .reduce import all_reduce, reduce, reduce_scatter  # noqa: F401,E402  (reductions, node first)
