"""Views of torch tensors and NumPy arrays as raw bytes (bfloat16 included), without copies where possible."""
import numpy as np

from .. import _core
from . import dtypes as _dtypes

try:
    import torch
    from torch.utils.dlpack import to_dlpack as _to_dlpack
except ImportError:  # the core and the MPI path work without torch
    torch = None


def is_tensor(x):
    return torch is not None and isinstance(x, torch.Tensor)


_DTYPE_NAMES = {}     # dtype object -> name: str(numpy dtype) runs Python code (~10 us per call)


def dtype_name(x) -> str:
    d = x.dtype
    name = _DTYPE_NAMES.get(d)
    if name is None:
        name = _DTYPE_NAMES[d] = str(d).replace("torch.", "")
    return name


def numel(x) -> int:
    return x.numel() if is_tensor(x) else int(np.asarray(x).size)


def itemsize(x) -> int:
    return x.element_size() if is_tensor(x) else np.asarray(x).itemsize


def _byte_view(t):
    """uint8 [t.nbytes] NumPy view of the contiguous CPU tensor ``t`` (no copy), or None if ``t`` is
    not a C-contiguous CPU tensor. Through DLPack and the C++ core: one call into torch instead of
    the view/numpy chain (bfloat16 has no NumPy dtype), which costs 25-45 us per tensor when the
    rank's caches are cold."""
    return _core.dlpack_bytes(_to_dlpack(t))


_DLPACK_NAMES = None   # DLPack element type (as _core.dlpack_pair gives it) -> torch dtype name


def _dlpack_names():
    """{DLPack element type: dtype name} of the torch dtypes that export to DLPack, each type named by
    one dtype only (a type two dtypes share is left out: their tensors take the checked path)."""
    global _DLPACK_NAMES
    if _DLPACK_NAMES is None:
        names, seen = {}, {}
        for name in _dtypes.names():
            dtype = getattr(torch, name, None)
            if not isinstance(dtype, torch.dtype):
                continue
            try:
                t = torch.empty(1, dtype=dtype)
                key = _core.dlpack_pair(_to_dlpack(t), _to_dlpack(t))[0]
            except Exception:        # no DLPack type for it (e.g. float8 in older DLPack)
                continue
            seen[key] = seen.get(key, 0) + 1
            names[key] = name
        _DLPACK_NAMES = {k: v for k, v in names.items() if seen[k] == 1}
    return _DLPACK_NAMES


def dlpack_pair(x, out):
    """For two torch tensors: (x's DLPack capsule, out's, their dtype name, x.nbytes, out.nbytes) when
    both are C-contiguous CPU tensors of the same dtype, else None. The capsules stand for the tensors
    in the _core round functions (round_put, round_collect) while they are alive: a collective's fast
    path then makes no NumPy views and reads no tensor attributes (on a host with more ranks than
    cores, each of those costs a rank microseconds of CPU that its peers wait for, tens when caches
    are cold)."""
    cx, co = _to_dlpack(x), _to_dlpack(out)
    info = _core.dlpack_pair(cx, co)
    if info is None or info[0] != info[2]:
        return None
    name = (_DLPACK_NAMES if _DLPACK_NAMES is not None else _dlpack_names()).get(info[0])
    if name is None:
        return None
    return cx, co, name, info[1], info[3]


def input_bytes(x) -> np.ndarray:
    """Read-only byte view of ``x`` (a contiguous copy first if ``x`` is not contiguous)."""
    if is_tensor(x):
        view = _byte_view(x)
        if view is None:
            if not x.is_cpu:
                raise TypeError(f"multiwrite works on CPU tensors; got a tensor on {x.device}")
            view = _byte_view(x.contiguous())
        return view
    a = np.ascontiguousarray(x)
    return a.reshape(-1).view(np.uint8)


class OutputBytes:
    """Writable byte view of an output (``.bytes``, uint8 [nbytes]); for a non-contiguous tensor, a
    staging copy written back by ``commit()``. The view of a tensor is made on first use of
    ``.bytes``: a collective can take its part in the exchange first (making it costs a rank tens
    of microseconds when its caches are cold, and the other ranks wait for that part)."""

    def __init__(self, out):
        self.out = out
        self._stage = None
        self._bytes = None
        if is_tensor(out):
            if not out.is_cpu:
                raise TypeError(f"multiwrite works on CPU tensors; got a tensor on {out.device}")
            self.nbytes = out.nbytes
        else:
            if not isinstance(out, np.ndarray) or not out.flags.c_contiguous or not out.flags.writeable:
                raise TypeError("output must be a torch tensor or a writable C-contiguous numpy array")
            self._bytes = out.reshape(-1).view(np.uint8)
            self.nbytes = self._bytes.nbytes

    @property
    def bytes(self):
        if self._bytes is None:
            self._bytes = _byte_view(self.out)
            if self._bytes is None:         # not contiguous: written through a staging copy
                self._stage = torch.empty(self.out.shape, dtype=self.out.dtype)
                self._bytes = _byte_view(self._stage)
        return self._bytes

    def commit(self):
        if self._stage is not None:
            with torch.no_grad():
                self.out.copy_(self._stage)
        return self.out
