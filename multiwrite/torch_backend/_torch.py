"""What every module of the backend shares: the backend's name, and torch / torch.distributed (None
when torch is not installed: multiwrite's MPI path works without torch; the backend needs it)."""
try:
    import torch
    import torch.distributed as dist
except ImportError:
    torch = dist = None

BACKEND_NAME = "multiwrite"
