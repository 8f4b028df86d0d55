"""Pure logic of the low-latency MoE path (ops/moe/low_latency.py): the capacity rule and block layout."""
import pytest

from multiwrite import _config
from multiwrite.ops.moe import low_latency as ll


@pytest.mark.parametrize("limit,t_max,want", [(32, 0, 1), (32, 1, 1), (32, 2, 2), (32, 3, 4), (32, 17, 32),
                                              (32, 32, 32), (32, 33, 0), (24, 20, 24), (0, 1, 0), (1, 1, 1)])
def test_capacity_next_power_of_two_up_to_the_limit(limit, t_max, want):
    assert ll._capacity(limit, t_max) == want


@pytest.mark.parametrize("C,row_bytes,k", [(1, 8192, 8), (3, 66, 3), (32, 8192, 8), (2, 1, 1)])
def test_block_layout_aligned_and_disjoint(C, row_bytes, k):
    lay = ll._Layout(C, row_bytes, k)
    assert lay.x == 64 and lay.idx >= lay.x + C * row_bytes and lay.idx % 8 == 0
    assert lay.w == lay.idx + 8 * C * k and lay.nbytes >= lay.w + 4 * C * k and lay.nbytes % 64 == 0


def test_decode_tokens_setting(monkeypatch):
    monkeypatch.delenv("MULTIWRITE_DECODE_TOKENS", raising=False)
    assert _config.decode_tokens() == 1 and _config.decode_tokens("mpi") == 1
    assert _config.decode_tokens("gloo") == 0          # the default is off under the Gloo transport
    monkeypatch.setenv("MULTIWRITE_DECODE_TOKENS", "0")
    assert _config.decode_tokens() == 0
    monkeypatch.setenv("MULTIWRITE_DECODE_TOKENS", "8")
    assert _config.decode_tokens("gloo") == 8
    monkeypatch.setenv("MULTIWRITE_DECODE_TOKENS", "-1")
    with pytest.raises(ValueError, match="MULTIWRITE_DECODE_TOKENS"):
        _config.decode_tokens()
    assert "MULTIWRITE_DECODE_TOKENS" in [name for name, _ in _config.AGREED]
