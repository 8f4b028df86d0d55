"""Shared helpers of the backend test programs (tests/mp/backend_*.py)."""
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore", category=FutureWarning)       # all_gather_into_tensor deprecation
warnings.filterwarnings("ignore", message=".*barrier.*")

import multiwrite as mw  # noqa: E402  (registers the backend)
from multiwrite.backend import group_of  # noqa: E402


def launcher():
    return "mpirun" if "OMPI_COMM_WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ \
        else "torchrun"


def init():
    """init_process_group("multiwrite") plus a Gloo group over the same ranks for comparisons."""
    dist.init_process_group("multiwrite")
    gloo = dist.new_group(backend="gloo")
    return gloo


def log(msg, all_ranks=False):
    if all_ranks or dist.get_rank() == 0:
        print(f"[rank {dist.get_rank()}] {msg}", flush=True)


def as_bits(t):
    """A view for bitwise comparison (floats compared by their bits, so -0.0/NaN count)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bool:
        return t
    return t.reshape(-1).view(torch.uint8)


def bitwise_equal(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(as_bits(a), as_bits(b))


class Timer:
    def __init__(self):
        self.t0 = time.monotonic()

    def __str__(self):
        return f"{time.monotonic() - self.t0:.1f}s"


def finish(name):
    dist.barrier()
    log(f"{name} OK ({launcher()}, {dist.get_world_size()} ranks, "
        f"{group_of().topo.num_nodes} nodes, transport {group_of().transport.name})")
    dist.destroy_process_group()
    sys.stdout.flush()
