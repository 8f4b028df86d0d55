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
