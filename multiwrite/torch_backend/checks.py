"""Argument checks of the backend's ops: unsupported combinations (bitwise ops on floating point, AVG on
integers, PREMUL_SUM, non-CPU or sparse tensors, mismatched dtypes or sizes) raise TypeError/ValueError
naming the op and the dtype, on every rank, before anything is sent."""
import torch
import torch.distributed as dist


def op_name(op):
    try:
        return str(op.op).split(".")[-1]
    except AttributeError:
        return str(op).split(".")[-1]


def _is_integral(dtype):
    return not (dtype.is_floating_point or dtype.is_complex)


def check_reduce(what, op, dtype):
    """Reject reductions PyTorch does not define (a clear error here, before anything is sent)."""
    R = dist.ReduceOp
    name = op_name(op)
    op = getattr(op, "op", op)       # ReduceOp -> RedOpType (``RedOpType == ReduceOp`` is always False)
    if op == R.PREMUL_SUM:
        raise ValueError(f"multiwrite backend: {what} with ReduceOp.PREMUL_SUM is not supported "
                         f"(it is NCCL-only in PyTorch); scale the tensor and use ReduceOp.SUM")
    if op in (R.BAND, R.BOR, R.BXOR) and not _is_integral(dtype):
        raise TypeError(f"multiwrite backend: {what} with ReduceOp.{name} needs an integer or bool "
                        f"tensor, got {dtype}")
    if op == R.AVG and _is_integral(dtype):
        raise TypeError(f"multiwrite backend: {what} with ReduceOp.AVG is not defined for {dtype} "
                        f"(the average of integers is not an integer); use ReduceOp.SUM and divide")


def check_cpu(what, *tensors):
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"multiwrite backend: {what} expects tensors, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise TypeError(f"multiwrite backend: {what} supports CPU tensors only, got a tensor on {t.device}")
        if t.is_sparse:
            raise TypeError(f"multiwrite backend: {what} does not support sparse tensors")


def reduce_scatter_lists(what, outputs, input_lists, size, op):
    """``reduce_scatter``'s tensor lists: one output and one list of ``size`` inputs of its size and
    dtype per process, CPU tensors, ``op`` defined for the dtype. Returns (output, inputs)."""
    if len(outputs) != 1 or len(input_lists) != 1:
        raise ValueError(f"multiwrite backend: {what} takes one output and one input list per process")
    out, ins = outputs[0], list(input_lists[0])
    check_cpu(what, out, *ins)
    check_same_dtype(what, [out] + ins)
    if len(ins) != size or any(t.numel() != out.numel() for t in ins):
        raise ValueError(f"multiwrite backend: {what} needs {size} input tensors of "
                         f"{out.numel()} elements each")
    check_reduce(what, op, out.dtype)
    return out, ins


def check_same_dtype(what, tensors):
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"multiwrite backend: {what} needs tensors of one dtype, got "
                        f"{sorted(str(d) for d in dtypes)}")


def check_output_input(what, output, input):
    """One output and one input tensor: CPU tensors of the same dtype."""
    check_cpu(what, output, input)
    if output.dtype != input.dtype:
        raise TypeError(f"multiwrite backend: {what}: output dtype {output.dtype} differs from input "
                        f"dtype {input.dtype}")


def check_world_multiple(what, name, big, small, size):
    """``big`` (the tensor called ``name``) must hold ``size`` x ``small``'s elements."""
    if big.numel() != size * small.numel():
        raise ValueError(f"multiwrite backend: {what}: {name} has {big.numel()} elements, expected "
                         f"world_size ({size}) x {small.numel()}")


# -- agreement of the ranks on an op's arguments ----------------------------------------------------
#
# Some ops cannot see by themselves that the ranks passed different sizes or dtypes: Gloo's gather
# aborts the process or returns garbage, its scatter returns short rows, and mw.broadcast raises only on
# the node whose ranks disagree while the other nodes return. Before such an op, and before every
# collective under TORCH_DISTRIBUTED_DEBUG=DETAIL (torch cannot wrap a Python ProcessGroup in its
# ProcessGroupWrapper, see process_group.py), the ranks exchange a small fixed-size signature of their
# arguments through the group's control allgather; every rank gets the same table and raises the same
# way: the rank whose own arguments were invalid raises its own error, every other rank a MismatchError
# naming the ranks and what they passed.

#: Stable op codes of the signature (never reuse a number).
OP_CODES = {
    "barrier": 1, "broadcast": 2, "gather": 3, "scatter": 4, "all_gather": 5, "all_gather_into_tensor": 6,
    "all_gather_coalesced": 7, "all_gather_into_tensor_coalesced": 8, "all_to_all": 9, "all_to_all_single": 10,
    "all_reduce": 11, "all_reduce_coalesced": 12, "reduce": 13, "reduce_scatter": 14,
    "reduce_scatter_tensor": 15, "reduce_scatter_tensor_coalesced": 16,
}
_OP_NAMES = {v: k for k, v in OP_CODES.items()}
_MAGIC = 0x6D77736967        # "mwsig": a signature row, not some other op's control values
_DIMS = 4                    # leading dimensions shown in messages (the whole shape is hashed)
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.int16, torch.int32,
           torch.int64, torch.uint8, torch.bool, torch.complex64, torch.complex128]
_NO_TENSOR = -1


def _dtype_code(dtype) -> int:
    try:
        return _DTYPES.index(dtype)
    except ValueError:
        import zlib
        return 1000 + zlib.crc32(str(dtype).encode()) % 1_000_000


def _dtype_label(code: int) -> str:
    if code == _NO_TENSOR:
        return "no tensor"
    if 0 <= code < len(_DTYPES):
        return str(_DTYPES[code]).replace("torch.", "")
    return f"dtype#{code}"


def signature(what, tensors, root=-1, reduce_op=None, shapes=False, sizes=True):
    """The int64 signature row of one op on this rank: op, root, reduce op, the tensors' dtype (the
    first one's; check_same_dtype rejects mixed lists), count, total elements (not with ``sizes``
    false: ops whose sizes may differ per rank), and with ``shapes`` the leading dimensions and a hash
    of every shape."""
    import zlib
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    dtype = _dtype_code(tensors[0].dtype) if tensors else _NO_TENSOR
    numel = sum(t.numel() for t in tensors) if sizes else -1
    shapes = shapes and sizes
    dims = [0] * _DIMS
    ndim = shape_hash = 0
    if shapes and tensors:
        ndim = tensors[0].dim()
        for i, d in enumerate(tuple(tensors[0].shape)[:_DIMS]):
            dims[i] = int(d)
        shape_hash = zlib.crc32(repr([tuple(t.shape) for t in tensors]).encode())
    op = -1 if reduce_op is None else _reduce_code(reduce_op)
    return [_MAGIC, OP_CODES[what], 0, int(root), op, dtype, len(tensors), numel, ndim, *dims, shape_hash]


def _reduce_code(op) -> int:
    op = getattr(op, "op", op)
    try:
        return int(op)
    except (TypeError, ValueError):
        return sum(map(ord, str(op)))


_FLAG = 2          # column of the "this rank's arguments are invalid" flag


def _describe(row) -> str:
    op, root, red, dtype, count, numel, ndim = (int(v) for v in row[1:2] + row[3:9])
    dims = [int(d) for d in row[9:9 + _DIMS]]
    text = _OP_NAMES.get(op, f"op#{op}")
    if root >= 0:
        text += f" root {root}"
    if red >= 0:
        text += f" ReduceOp.{_REDUCE_NAMES.get(red, red)}"
    if dtype != _NO_TENSOR:
        text += f", {count} {_dtype_label(dtype)} tensor{'s' if count != 1 else ''}"
        if numel >= 0:
            text += f" of {numel} element{'s' if numel != 1 else ''}"
        if ndim:
            shown = dims[:min(ndim, _DIMS)]
            text += f", shape [{', '.join(map(str, shown))}{', ...' if ndim > _DIMS else ''}]"
    return text


def _reduce_names():
    names = {}
    for name in ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR", "PREMUL_SUM"):
        op = getattr(dist.ReduceOp, name, None)
        if op is not None:
            names[_reduce_code(op)] = name
    return names


_REDUCE_NAMES = _reduce_names() if dist.is_available() else {}


def agree_on_signature(group, what, row, local_error=None):
    """Compare this rank's signature ``row`` with every other rank's through ``group``'s control
    allgather (one small message per node pair). Raises on every rank alike: ``local_error`` (this
    rank's own invalid arguments) as it is, else a MismatchError when another rank's arguments were
    invalid or the rows differ."""
    import numpy as np

    from ..engine.control import allgather_int64
    from ..errors import MismatchError
    row = list(row)
    if local_error is not None:
        row[_FLAG] = 1
    table = allgather_int64(group, np.asarray(row, dtype=np.int64), f"multiwrite backend: {what} (argument check)")
    if local_error is not None:
        raise local_error
    bad = [r for r in range(table.shape[0]) if table[r, _FLAG]]
    if bad:
        raise MismatchError(f"multiwrite backend: {what}: rank(s) {', '.join(map(str, bad))} rejected their "
                            f"arguments (see the error on those ranks); no data was sent")
    if any(int(t[0]) != _MAGIC for t in table):
        raise MismatchError(f"multiwrite backend: {what}: the ranks called different operations")
    rows = [tuple(int(v) for v in t) for t in table]
    if len(set(rows)) > 1:
        groups = {}
        for r, t in enumerate(rows):
            groups.setdefault(t, []).append(r)
        parts = "; ".join(f"rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))}: {_describe(list(t))}"
                          for t, rs in groups.items())
        raise MismatchError(f"multiwrite backend: {what}: the ranks passed different arguments ({parts}); "
                            f"sizes, dtypes, roots and ops must be the same on every rank. No data was sent")
