"""multiwrite._core.gather_reduce: float32 accumulation in index order, one rounding, for float32,
float16 and bfloat16 (as uint16), against NumPy / torch references."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from multiwrite import _core as c


def to_f32(a):
    if a.dtype == np.uint16:                                  # bfloat16 bits
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def from_f32(acc, dtype):
    if dtype == np.uint16:                                    # torch rounds bf16 to nearest even
        return torch.from_numpy(acc).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    return acc.astype(dtype)                                  # numpy: IEEE round-to-nearest-even


def ref_gather_reduce(src, index):
    S, F = index.shape
    acc = np.zeros((S, src.shape[1]), np.float32)
    s32 = to_f32(src)
    for f in range(F):                                        # same order, same float32 additions
        rows = index[:, f] >= 0
        acc[rows] += s32[index[rows, f]]
    return from_f32(acc, src.dtype)


def random_src(rng, R, H, dtype):
    v = (rng.standard_normal((R, H)) * rng.choice([1e-6, 1.0, 100.0, 3e4], size=(R, 1))).astype(np.float32)
    if dtype == np.uint16:
        return from_f32(v, np.uint16)
    return v.astype(dtype)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([np.float32, np.float16, np.uint16]), st.integers(0, 9), st.integers(0, 40),
       st.integers(0, 12), st.integers(0, 5), st.integers(0, 2**32 - 1))
def test_gather_reduce_matches_reference(dtype, R, H, S, F, seed):
    rng = np.random.default_rng(seed)
    src = random_src(rng, R, H, dtype)
    index = rng.integers(-1, R, size=(S, F)) if R else np.full((S, F), -1)
    index = np.ascontiguousarray(index, dtype=np.int64)
    out = np.full((S, H), 77, dtype=dtype)
    c.gather_reduce(src, index, out)
    expect = ref_gather_reduce(src, index)
    np.testing.assert_array_equal(out.view(np.uint8), expect.view(np.uint8))   # bit-exact
    again = np.empty_like(out)
    c.gather_reduce(src, index, again)
    assert again.tobytes() == out.tobytes()                                    # deterministic


def test_all_minus_one_rows_are_zero():
    src = np.ones((3, 4), np.float16)
    out = np.full((2, 4), 5, np.float16)
    c.gather_reduce(src, np.array([[-1, -1], [0, 2]], np.int64), out)
    assert out.tolist() == [[0.0] * 4, [2.0] * 4]
    assert not np.signbit(out[0]).any()


def sum_pairs(a, b, width):
    """gather_reduce of a[i] + b[i] (1-D arrays of one dtype) computed on rows of ``width`` values:
    width 1 runs the scalar loop, wide rows the vectorized one. Returns the sums, 1-D."""
    n = len(a) // width * width
    src = np.ascontiguousarray(np.concatenate([a[:n], b[:n]]).reshape(-1, width))
    m = n // width
    index = np.stack([np.arange(m), np.arange(m, 2 * m)], axis=1).astype(np.int64)
    out = np.empty((m, width), a.dtype)
    c.gather_reduce(src, index, out)
    return out.reshape(-1), n


@pytest.mark.parametrize("width", [1, 256])
def test_float16_widening_and_narrowing_is_exact_for_every_value(width):
    h = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(-1, width)
    out = np.empty_like(h)
    c.gather_reduce(h, np.arange(2**16 // width, dtype=np.int64).reshape(-1, 1), out)
    nan = np.isnan(h)
    assert np.isnan(out[nan]).all()
    expect = h.copy()
    expect[h == 0] = 0                                        # 0.0 + -0.0 is +0.0 (the sum starts at 0)
    np.testing.assert_array_equal(out[~nan].view(np.uint16), expect[~nan].view(np.uint16))


@pytest.mark.parametrize("width", [1, 200])
def test_float16_rounding_of_sums_every_pair_class(width):
    """a + b in float32, rounded once to half: covers ties, subnormals, overflow to inf."""
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2**16, size=(200_000, 2), dtype=np.uint16)
    pairs = bits.view(np.float16)
    pairs = pairs[np.isfinite(pairs).all(1)]
    out, n = sum_pairs(pairs[:, 0], pairs[:, 1], width)
    expect = (pairs[:n, 0].astype(np.float32) + pairs[:n, 1].astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), expect.view(np.uint16))
    # NaN in, NaN out (quiet, the input's sign); inf + -inf is NaN
    special = np.array([np.nan, -np.nan, np.inf, -np.inf, np.inf], np.float16)
    other = np.array([1, 1, 1, -1, -np.inf], np.float16)
    got, _ = sum_pairs(np.tile(special, width), np.tile(other, width), width)
    got = got.reshape(width, -1).view(np.uint16)
    assert (got[:, 0] == 0x7E00).all() and (got[:, 1] == 0xFE00).all()
    assert (got[:, 2] == 0x7C00).all() and (got[:, 3] == 0xFC00).all()
    assert ((got[:, 4] & 0x7FFF) == 0x7E00).all()
    # ties to even at the top of the range and in the subnormal range
    cases = np.array([[65504, 8], [65504, 16], [1, 2**-11], [1 + 2**-10, 2**-11], [2**-14, -2**-24],
                      [-65504, -16], [2**-24, 2**-24]], np.float16)
    out = np.empty((len(cases), 1), np.float16)
    c.gather_reduce(cases.reshape(-1, 1), np.arange(cases.size, dtype=np.int64).reshape(-1, 2), out)
    expect = (cases[:, :1].astype(np.float32) + cases[:, 1:].astype(np.float32)).astype(np.float16)
    np.testing.assert_array_equal(out.view(np.uint16), expect.view(np.uint16))


@pytest.mark.parametrize("width", [1, 200])
def test_bfloat16_rounding_matches_torch(width):
    rng = np.random.default_rng(2)
    bits = rng.integers(0, 2**16, size=(200_000, 2), dtype=np.uint16)
    f = to_f32(bits)
    bits = bits[np.isfinite(f).all(1)]
    out, n = sum_pairs(bits[:, 0], bits[:, 1], width)
    acc = to_f32(bits[:n, 0]) + to_f32(bits[:n, 1])
    expect = from_f32(np.ascontiguousarray(acc), np.uint16)
    finite = np.isfinite(acc)
    np.testing.assert_array_equal(out[finite], expect[finite])
    assert (out[~finite] & 0x7FFF == 0x7F80).all()            # overflow to +-inf
    # NaN (any sign or payload) becomes 0x7FC0
    nan = np.array([0x7FC1, 0xFF81, 0x7F80], np.uint16)       # NaN, -NaN, inf (+ -inf below)
    got, _ = sum_pairs(np.tile(nan, width), np.tile(np.array([0, 0, 0xFF80], np.uint16), width), width)
    assert (got == 0x7FC0).all()


def test_gather_reduce_errors():
    src = np.zeros((3, 4), np.float32)
    idx = np.zeros((2, 2), np.int64)
    out = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"index\[1, 0\] = 3 is outside \[-1, 3\) \(src has 3 rows\)"):
        c.gather_reduce(src, np.array([[0, 1], [3, 0]], np.int64), out)
    with pytest.raises(ValueError, match=r"index\[0, 1\] = -2 is outside"):
        c.gather_reduce(src, np.array([[0, -2], [0, 0]], np.int64), out)
    with pytest.raises(ValueError, match=r"src must have dtype float32, float16 or uint16 \(bfloat16 bits\), got float64"):
        c.gather_reduce(src.astype(np.float64), idx, out)
    with pytest.raises(ValueError, match=r"out must have the dtype of src \(float32\), got float16"):
        c.gather_reduce(src, idx, out.astype(np.float16))
    with pytest.raises(ValueError, match=r"out has shape \(3, 4\), expected \(2, 4\)"):
        c.gather_reduce(src, idx, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"src must be 2-D \[R, H\], got shape \(12,\)"):
        c.gather_reduce(src.ravel(), idx, out)
    with pytest.raises(ValueError, match="index must have dtype int64, got int32"):
        c.gather_reduce(src, idx.astype(np.int32), out)
    with pytest.raises(ValueError, match="src must be C-contiguous"):
        c.gather_reduce(np.zeros((3, 8), np.float32)[:, ::2], idx, out)
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        c.gather_reduce(src, idx, ro)
