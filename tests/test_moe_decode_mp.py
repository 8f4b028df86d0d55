"""Decode-sized MoE calls on the low-latency path (ops/moe/low_latency.py), 4 ranks as 2 nodes, under
mpirun and torchrun: exact results against a reference, the same bits as the normal path, errors on
every rank, inter-node bytes."""
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402


def _digests(out):
    return dict(re.findall(r"rank (\d+): digest ([0-9a-f]+)", out))


@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_decode_path_matches_normal_path(launcher):
    runs = {}
    for limit in ("8", "0"):
        out = _launch.check(launcher, 4, "moe_decode_prog.py", env={"MULTIWRITE_RANKS_PER_NODE": 2,
                                                                    "MULTIWRITE_DECODE_TOKENS": limit}, timeout=300)
        assert out.count("decode OK") == 4, out
        runs[limit] = _digests(out)
        assert len(runs[limit]) == 4, out
    assert runs["8"] == runs["0"], f"the low-latency path's results differ from the normal path's: {runs}"


@pytest.mark.parametrize("ranks_per_node,nprocs", [(1, 4), (3, 5)], ids=["4x1", "3+2"])
def test_decode_path_other_shapes(ranks_per_node, nprocs):
    """Nodes of one rank (nothing shared inside a node) and nodes of different sizes."""
    out = _launch.check("mpirun", nprocs, "moe_decode_prog.py",
                        env={"MULTIWRITE_RANKS_PER_NODE": ranks_per_node, "MULTIWRITE_DECODE_TOKENS": "8"},
                        timeout=300)
    assert out.count("decode OK") == nprocs, out
