"""Multi-process tests of MoE dispatch/combine (4 ranks as 2 nodes), under mpirun and torchrun."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _launch  # noqa: E402


@pytest.mark.parametrize("decode", ["0", "32"], ids=["normal_path", "low_latency_on"])
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_dispatch_combine(launcher, decode):
    # small pieces: moe_prog's large case (~1.2 MiB per rank) travels in several. decode "0": the
    # normal path only (exact inter-node bytes checked); "32" (the default): calls of <= 32 tokens per
    # rank take the low-latency path from the second one on, mixed with normal calls and errors
    out = _launch.check(launcher, 4, "moe_prog.py", env={"MULTIWRITE_RANKS_PER_NODE": 2, "MULTIWRITE_PIECE_KIB": 256,
                                                          "MULTIWRITE_DECODE_TOKENS": decode}, timeout=300)
    assert "moe OK" in out


def test_dispatch_combine_unequal_nodes():
    out = _launch.check("mpirun", 5, "moe_prog.py", env={"MULTIWRITE_RANKS_PER_NODE": 3}, timeout=300)
    assert "moe OK" in out


@pytest.mark.parametrize("mode", ["multiwrite", "unicast"])
@pytest.mark.parametrize("launcher", _launch.LAUNCHERS)
def test_moe_layer_matches_single_process(launcher, mode):
    """gate -> top-k -> mw.moe.dispatch -> experts -> mw.moe.combine: output and all gradients equal a
    single-process reference within 1e-5 (float32)."""
    script = os.path.join(_launch.ROOT, "scripts", "moe_layer_example.py")
    out = _launch.check(launcher, 4, script, ["--mode", mode], env={"MULTIWRITE_RANKS_PER_NODE": 2},
                        timeout=300)
    assert "moe layer OK" in out


def test_moe_layer_bfloat16():
    script = os.path.join(_launch.ROOT, "scripts", "moe_layer_example.py")
    out = _launch.check("mpirun", 4, script, ["--dtype", "bfloat16"], env={"MULTIWRITE_RANKS_PER_NODE": 2},
                        timeout=300)
    assert "moe layer OK" in out
