"""ops"""
# (``reduce`` stays the submodule's name here: mw.reduce / ops.reduce.reduce is the function)
from .reduce import all_reduce, reduce_scatter  # noqa: F401,E402  (reductions, node first)
