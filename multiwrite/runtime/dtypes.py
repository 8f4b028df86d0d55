"""Small integer codes for dtypes, carried in packet window ids so that ranks disagreeing on the dtype
of a collective (same byte size, different type) are detected."""
_NAMES = ["uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64",
          "bool", "complex64", "complex128", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"]
_CODES = {n: i + 1 for i, n in enumerate(_NAMES)}


def code(name: str) -> int:
    """1..N for known dtypes, 255 for anything else."""
    found = _CODES.get(name)        # a plain name: no string work (every collective call asks)
    return found if found is not None else _CODES.get(str(name).replace("torch.", ""), 255)


def name(code_: int) -> str:
    return _NAMES[code_ - 1] if 1 <= code_ <= len(_NAMES) else f"dtype#{code_}"


def names():
    """The dtype names that have a code (1..N)."""
    return list(_NAMES)
