"""The ``"multiwrite"`` torch.distributed backend: the old import path of the package
``multiwrite.torch_backend`` (importing either registers the backend), kept for
``from multiwrite.backend import group_of`` and friends."""
from .torch_backend import BACKEND_NAME, group_of, register
from .torch_backend._torch import dist

if dist is not None:
    from .torch_backend import ProcessGroupMultiwrite

__all__ = ["BACKEND_NAME", "ProcessGroupMultiwrite", "group_of", "register"]
