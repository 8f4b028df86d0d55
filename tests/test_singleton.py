"""A multiwrite program started without a launcher (an MPI singleton): it works as a 1-rank world, and
leaves nothing behind in /dev/shm (Open MPI 5 otherwise leaves its shared-memory BTL's 16 MiB backing
file after every singleton run)."""
import os
import subprocess
import sys

import pytest

PROGRAM = """
import torch, multiwrite as mw
g = mw.init()
out = torch.empty(4, dtype=torch.bfloat16)
mw.all_gather(out, torch.arange(4, dtype=torch.bfloat16))
assert out.tolist() == [0.0, 1.0, 2.0, 3.0], out
print("world", g.size)
import os
print("btl env", os.environ.get("OMPI_MCA_btl"))     # MPI's initialization only: not left for child processes
"""


def _segments():
    try:
        return {n for n in os.listdir("/dev/shm") if n.startswith("sm_segment.")}
    except FileNotFoundError:
        return set()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this system")
def test_singleton_runs_and_leaves_no_segment():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMPI_", "PMIX_", "PRTE_")) and k not in ("MULTIWRITE_TRANSPORT", "WORLD_SIZE")}
    env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    before = _segments()
    run = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "world 1" in run.stdout and "btl env None" in run.stdout
    assert _segments() - before == set()
