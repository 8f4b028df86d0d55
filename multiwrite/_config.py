"""Environment settings (read once per group creation, so tests can change them between groups)."""
import os

MODES = ("multiwrite", "unicast")
TRANSPORTS = ("mpi", "gloo")
DEFAULT_TIMEOUT_S = 300.0


def mode() -> str:
    """MULTIWRITE_MODE: 'multiwrite' (one copy per receiving node, default) or 'unicast' (one per rank)."""
    value = os.environ.get("MULTIWRITE_MODE", "multiwrite").strip().lower()
    if value not in MODES:
        raise ValueError(f"MULTIWRITE_MODE={value!r}: expected one of {MODES}")
    return value


def check_mode(value):
    """Validate a per-call mode override (None means the environment default)."""
    if value is None:
        return mode()
    if value not in MODES:
        raise ValueError(f"mode={value!r}: expected one of {MODES}")
    return value


def timeout_s() -> float:
    """MULTIWRITE_TIMEOUT (seconds): how long any wait on a peer may take before a timeout error."""
    raw = os.environ.get("MULTIWRITE_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"MULTIWRITE_TIMEOUT={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"MULTIWRITE_TIMEOUT={raw!r} must be > 0")
    return value


DEFAULT_PIECE_KIB = 2048


def _int_setting(name, minimum, default=None):
    """Integer environment setting ``name`` (>= ``minimum``), or ``default`` when unset or empty."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be >= {minimum}")
    return value


def piece_bytes() -> int:
    """MULTIWRITE_PIECE_KIB: target size of the pieces large dispatch/combine packets travel in
    (default 2048 KiB). Both ends derive the cuts from it: every rank must use the same value."""
    return _int_setting("MULTIWRITE_PIECE_KIB", 16, DEFAULT_PIECE_KIB) << 10


def ranks_per_node():
    """MULTIWRITE_RANKS_PER_NODE=L groups consecutive ranks into emulated nodes (None = detect)."""
    return _int_setting("MULTIWRITE_RANKS_PER_NODE", 1)


def launched_by_mpi() -> bool:
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"))


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ and "RANK" in os.environ)


def transport() -> str:
    """MULTIWRITE_TRANSPORT=mpi|gloo, else what the launcher implies (mpirun -> mpi, torchrun -> gloo)."""
    value = os.environ.get("MULTIWRITE_TRANSPORT", "").strip().lower()
    if value:
        if value not in TRANSPORTS:
            raise ValueError(f"MULTIWRITE_TRANSPORT={value!r}: expected one of {TRANSPORTS}")
        return value
    if "TORCHELASTIC_RUN_ID" in os.environ:      # torchrun itself
        return "gloo"
    if launched_by_mpi():                        # before MASTER_ADDR: multiwrite sets it under mpirun too
        return "mpi"
    if launched_by_torchrun():
        return "gloo"
    return "mpi"
