"""multiwrite._core.dlpack_bytes: uint8 views of tensors through DLPack (no copy, lifetime, refusals)."""
import gc

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.utils.dlpack import from_dlpack, to_dlpack  # noqa: E402

from multiwrite import _core  # noqa: E402


@pytest.mark.parametrize("make", [
    lambda: torch.arange(10, dtype=torch.bfloat16),
    lambda: torch.arange(12, dtype=torch.float32).reshape(3, 4),
    lambda: torch.arange(8, dtype=torch.int64).reshape(2, 1, 4),
    lambda: torch.tensor(3.5),                      # 0-d
    lambda: torch.ones(5, dtype=torch.bool),
    lambda: torch.arange(6.0)[2:],                  # starts inside its storage
    lambda: torch.arange(12.0).reshape(4, 3).t()[:, 0:1],   # odd stride on a size-1 dimension: C-contiguous
])
def test_view_is_the_tensors_memory(make):
    x = make()
    view = _core.dlpack_bytes(to_dlpack(x))
    ref = x.contiguous().reshape(-1).view(torch.uint8).numpy()
    assert view.dtype == np.uint8 and view.ndim == 1 and view.flags.writeable
    assert view.nbytes == x.numel() * x.element_size() and (view == ref).all()
    view[:] = 0x01                                  # writes reach the tensor: no copy
    assert (x.reshape(-1).view(torch.uint8) == 1).all()


def test_empty_tensor():
    assert _core.dlpack_bytes(to_dlpack(torch.zeros(0, 3))).nbytes == 0


def test_not_contiguous_gives_none_and_leaves_the_capsule():
    cap = to_dlpack(torch.arange(12.0).reshape(3, 4).t())
    assert _core.dlpack_bytes(cap) is None
    assert from_dlpack(cap).shape == (4, 3)         # still unconsumed: torch can take it


def test_array_keeps_the_tensor_alive():
    x = torch.full((1 << 16,), 7, dtype=torch.int32)
    view = _core.dlpack_bytes(to_dlpack(x))
    del x
    gc.collect()
    assert (view.view(np.int32) == 7).all()


def test_refusals():
    cap = to_dlpack(torch.ones(3))
    _core.dlpack_bytes(cap)
    for bad in (cap, 5, np.ones(3), "dltensor"):     # a consumed capsule, non-capsules
        with pytest.raises(ValueError, match="DLPack capsule"):
            _core.dlpack_bytes(bad)


def test_dlpack_pair_types_sizes_and_refusals():
    """dlpack_pair: each tensor's DLPack element type and bytes, capsules left unconsumed; None unless
    both are C-contiguous CPU tensors; ValueError for non-capsules."""
    a, b = torch.zeros(3, dtype=torch.bfloat16), torch.zeros(2, 6, dtype=torch.bfloat16)
    ca, cb = to_dlpack(a), to_dlpack(b)
    ka, na, kb, nb = _core.dlpack_pair(ca, cb)
    assert (na, nb) == (6, 24) and ka == kb
    assert from_dlpack(ca).shape == (3,) and from_dlpack(cb).shape == (2, 6)   # still unconsumed
    kf = _core.dlpack_pair(to_dlpack(torch.zeros(1)), to_dlpack(torch.zeros(1, dtype=torch.float16)))
    assert kf[0] != kf[2] != ka                    # float32, float16, bfloat16 differ
    assert _core.dlpack_pair(to_dlpack(torch.zeros(4, 4).t()), to_dlpack(a)) is None
    for bad in (np.zeros(3), 5):
        with pytest.raises(ValueError, match="DLPack capsules"):
            _core.dlpack_pair(bad, to_dlpack(a))


def test_dlpack_dtype_names_are_unambiguous():
    """_tensors.dlpack_pair names the dtype of a pair; a pair of different dtypes, or a non-contiguous
    tensor, gets None (the checked path then reports it)."""
    from multiwrite.runtime import tensors as _tensors
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.uint8, torch.bool):
        x, out = torch.zeros(2, dtype=dtype), torch.zeros(8, dtype=dtype)
        _, _, name, nx, nout = _tensors.dlpack_pair(x, out)
        assert name == str(dtype).replace("torch.", "") and (nx, nout) == (2 * x.element_size(), 8 * x.element_size())
    assert _tensors.dlpack_pair(torch.zeros(2), torch.zeros(8, dtype=torch.int32)) is None
    assert _tensors.dlpack_pair(torch.zeros(2), torch.zeros(4, 2).t()) is None
