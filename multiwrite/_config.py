"""Environment settings (read when a group is created, so tests can change them between groups).

Every ``MULTIWRITE_*`` value is validated where it is read: a bad one raises ValueError naming the
variable and what it must be. Settings that must be equal on every rank (``AGREED``) are compared
across ranks when a group is created (see ``agreed`` and ``disagreement``). The rack
(``rack_state``: MULTIWRITE_RACK, MULTIWRITE_TOPOLOGY) differs between ranks; topology.detect checks
that the ranks of one node report the same one.
"""
import hashlib
import math
import os
import socket

MODES = ("multiwrite", "unicast")
TRANSPORTS = ("mpi", "gloo")
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_PIECE_KIB = 2048
DEFAULT_SPIN_US = 50.0
DEFAULT_SLEEP_MAX_US = 50.0


def mode() -> str:
    """MULTIWRITE_MODE: 'multiwrite' (one copy per receiving node, default) or 'unicast' (one per rank)."""
    value = os.environ.get("MULTIWRITE_MODE", "multiwrite").strip().lower()
    if value not in MODES:
        raise ValueError(f"MULTIWRITE_MODE={value!r}: expected one of {MODES}")
    return value


REDUCE_CHOICES = ("auto", "native", "gloo")


def reduce_choice() -> str:
    """MULTIWRITE_REDUCE: where the torch backend's reductions run. 'native' = multiwrite's node-first
    reductions (ops/reduce.py), 'gloo' = the internal Gloo group, 'auto' (default) = native except when
    every node has one rank and there are more than two nodes: there is nothing to reduce inside a
    node, and the direct exchange between many nodes (an incast at every owner) is slower than Gloo's
    ring (1.8-2.7 x Gloo's all_reduce time on 8 nodes x 1 rank, docs/design.md)."""
    value = os.environ.get("MULTIWRITE_REDUCE", "auto").strip().lower()
    if value not in REDUCE_CHOICES:
        raise ValueError(f"MULTIWRITE_REDUCE={value!r}: expected one of {REDUCE_CHOICES}")
    return value


def check_mode(value):
    """Validate a per-call mode override (None means the environment default)."""
    if value is None:
        return mode()
    if value not in MODES:
        raise ValueError(f"mode={value!r}: expected one of {MODES}")
    return value


def _number(name, raw, minimum, *, inclusive=True):
    """``raw`` as a finite float >= ``minimum`` (> with ``inclusive`` False); ValueError naming ``name``."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}={raw!r} must be a finite number")
    if value < minimum or (not inclusive and value == minimum):
        raise ValueError(f"{name}={raw!r} must be {'>=' if inclusive else '>'} {minimum:g}")
    return value


def check_timeout(value, name="timeout"):
    """A timeout in seconds: finite and > 0 (NaN or inf would let a wait hang forever)."""
    return _number(name, value, 0.0, inclusive=False)


def timeout_s() -> float:
    """MULTIWRITE_TIMEOUT (seconds, finite, > 0): how long any wait on a peer may take before a
    timeout error."""
    raw = os.environ.get("MULTIWRITE_TIMEOUT", "")
    return DEFAULT_TIMEOUT_S if raw.strip() == "" else check_timeout(raw, "MULTIWRITE_TIMEOUT")


def _int_setting(name, minimum, default=None):
    """Integer environment setting ``name`` (>= ``minimum``), or ``default`` when unset or empty."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
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


def decode_tokens(transport_name: str = "mpi") -> int:
    """MULTIWRITE_DECODE_TOKENS: MoE dispatch/combine calls of at most this many tokens per rank take
    the low-latency path (ops/moe/low_latency.py: one round each, no agreement first); 0 turns it off.
    Default: 1 under the MPI transport, 0 (off) under the Gloo transport. Measured on the 2 x 4 virtual
    cluster (ratio to the faster baseline, normal path -> this path): MPI, dispatch T=1 1.40 -> 0.98,
    T=2 1.30 -> 0.96, T=8 0.82 -> 1.02, combine T=1 2.43 -> 2.48, T=2 1.65 -> 2.69 (its rows travel
    unreduced, one per destination rank); Gloo, dispatch T=1 0.88 -> 0.78 but combine 1.72 -> 2.62.
    Every rank must use the same value."""
    default = 1 if transport_name == "mpi" else 0
    return _int_setting("MULTIWRITE_DECODE_TOKENS", 0, default)


def ranks_per_node():
    """MULTIWRITE_RANKS_PER_NODE=L groups consecutive ranks into emulated nodes (None = detect)."""
    return _int_setting("MULTIWRITE_RANKS_PER_NODE", 1)


def spin_s() -> float:
    """MULTIWRITE_SPIN_US (µs, >= 0, default 50): polling without sleeping before a wait sleeps."""
    raw = os.environ.get("MULTIWRITE_SPIN_US", "")
    return (DEFAULT_SPIN_US if raw.strip() == "" else _number("MULTIWRITE_SPIN_US", raw, 0.0)) * 1e-6


def sleep_max_s() -> float:
    """MULTIWRITE_SLEEP_MAX_US (µs, > 0, default 50): the longest sleep between two polls of a wait."""
    raw = os.environ.get("MULTIWRITE_SLEEP_MAX_US", "")
    value = DEFAULT_SLEEP_MAX_US if raw.strip() == "" else _number("MULTIWRITE_SLEEP_MAX_US", raw, 0.0,
                                                                      inclusive=False)
    return value * 1e-6


def launched_by_mpi() -> bool:
    return any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"))


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ and "RANK" in os.environ)


def launcher_transport() -> str:
    """The transport the launcher implies: torchrun -> gloo, mpirun (or no launcher) -> mpi."""
    if "TORCHELASTIC_RUN_ID" in os.environ:      # torchrun itself
        return "gloo"
    if launched_by_mpi():                        # before MASTER_ADDR: multiwrite sets it under mpirun too
        return "mpi"
    if launched_by_torchrun():
        return "gloo"
    return "mpi"


def transport() -> str:
    """MULTIWRITE_TRANSPORT=mpi|gloo, else what the launcher implies (mpirun -> mpi, torchrun -> gloo)."""
    value = os.environ.get("MULTIWRITE_TRANSPORT", "").strip().lower()
    if value:
        if value not in TRANSPORTS:
            raise ValueError(f"MULTIWRITE_TRANSPORT={value!r}: expected one of {TRANSPORTS}")
        return value
    return launcher_transport()


def local_state(kind=None, timeout=None):
    """This rank's start-up state, without raising: (transport kind, timeout in seconds, the state every
    rank compares, the first settings error or None). With an error, the kind and timeout fall back to
    the launcher's and the default, so that this rank can still tell the others why it cannot start
    (they raise at once instead of waiting for it until their timeout)."""
    error = None
    try:
        kind = kind or transport()
    except ValueError as e:
        kind, error = launcher_transport(), e
    try:
        seconds = check_timeout(timeout) if timeout is not None else timeout_s()
    except ValueError as e:
        seconds, error = DEFAULT_TIMEOUT_S, error or e
    values = None
    if error is None:
        try:
            validate_all()
            values = agreed()
        except ValueError as e:
            error = e
    return kind, seconds, (kind, values, None if error is None else str(error)), error


def validate_all():
    """Read and validate every setting that is read per group; raises ValueError naming the first bad
    one. Returns the polling settings (spin, longest sleep), for transport.base.configure_polling."""
    transport(), mode(), timeout_s(), piece_bytes(), ranks_per_node(), reduce_choice(), decode_tokens()
    rack_state()
    return spin_s(), sleep_max_s()


#: Settings every rank of a group must agree on: (environment variable, reader).
AGREED = (("MULTIWRITE_RANKS_PER_NODE", ranks_per_node), ("MULTIWRITE_PIECE_KIB", lambda: piece_bytes() >> 10),
          ("MULTIWRITE_MODE", mode), ("MULTIWRITE_REDUCE", reduce_choice),
          ("MULTIWRITE_DECODE_TOKENS", decode_tokens))


def agreed():
    """This rank's values of the AGREED settings, as a tuple (compared across ranks at group creation)."""
    return tuple(read() for _, read in AGREED)


def disagreement(values_by_rank):
    """The message naming the first AGREED setting whose values differ across ranks (``values_by_rank[r]``
    is rank r's ``agreed()``), or None when every rank agrees."""
    for i, (name, _) in enumerate(AGREED):
        seen = {}
        for r, values in enumerate(values_by_rank):
            seen.setdefault(values[i], []).append(r)
        if len(seen) > 1:
            parts = "; ".join(f"{'unset' if v is None else v} on rank(s) {_ranks(rs)}" for v, rs in seen.items())
            return f"{name} must be the same on every rank, but it is {parts}"
    return None


def _ranks(ranks):
    return ", ".join(map(str, ranks)) if len(ranks) <= 8 else f"{', '.join(map(str, ranks[:8]))}, ..."


# -- the rack of this rank (not in AGREED: it differs between ranks; topology.detect checks that the
# ranks of one node agree) ---------------------------------------------------------------------------

def rack_env():
    """MULTIWRITE_RACK: the name of this rank's rack (any non-empty string, equal on every rank of one
    rack; surrounding whitespace is ignored). None when unset or empty."""
    value = os.environ.get("MULTIWRITE_RACK", "").strip()
    return value or None


def topology_file():
    """MULTIWRITE_TOPOLOGY: path of a file mapping hostname -> rack (see read_topology_file), or None."""
    value = os.environ.get("MULTIWRITE_TOPOLOGY", "").strip()
    return value or None


def read_topology_file(path):
    """The {hostname: rack} map of topology file ``path``: one ``hostname rack`` pair per line
    (whitespace-separated), ``#`` starts a comment (to the end of the line), blank lines are ignored.
    ValueError naming the file and the line number for a malformed line or a host given two racks, and
    naming the file when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"MULTIWRITE_TOPOLOGY={path!r}: cannot read it: {exc}") from None
    racks, where = {}, {}
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"MULTIWRITE_TOPOLOGY={path!r}, line {number}: expected 'hostname rack', "
                             f"got {line.strip()!r}")
        host, rack = fields
        if host in racks and racks[host] != rack:
            raise ValueError(f"MULTIWRITE_TOPOLOGY={path!r}, line {number}: host {host!r} is in rack "
                             f"{racks[host]!r} on line {where[host]} and in rack {rack!r} here")
        racks.setdefault(host, rack)
        where.setdefault(host, number)
    return racks


def rack(hostname=None):
    """This rank's rack name, or None when no rack is configured (every node in one rack).

    MULTIWRITE_RACK wins; else, with MULTIWRITE_TOPOLOGY set, this host's entry in that file (the
    exact hostname, else the name before its first dot); a host missing from the file is a ValueError
    naming it."""
    return rack_state(hostname)[0]


def rack_state(hostname=None):
    """(rack name or None, topology file path or None, digest of the file's map or None): what every
    rank reports when a group is created (topology.detect). The file is read only when
    MULTIWRITE_RACK is unset; the digest lets the ranks that read a file check that they read the
    same map."""
    name = rack_env()
    if name is not None:
        return name, None, None
    path = topology_file()
    if path is None:
        return None, None, None
    racks = read_topology_file(path)
    host = hostname if hostname is not None else socket.gethostname()
    name = racks.get(host, racks.get(host.split(".", 1)[0]))
    if name is None:
        raise ValueError(f"MULTIWRITE_TOPOLOGY={path!r}: host {host!r} is not in the file (set "
                         f"MULTIWRITE_RACK on it, or add a line '{host} <rack>')")
    digest = hashlib.sha256(repr(sorted(racks.items())).encode()).hexdigest()[:16]
    return name, path, digest


def topology_file_disagreement(states_by_rank):
    """The message saying that ranks read different topology files (``states_by_rank[r]`` is rank r's
    ``rack_state()``; ranks that read none are not compared), or None. The maps are compared, not the
    paths: a copy of one file under another path is the same topology."""
    seen = {}
    for r, (_, path, digest) in enumerate(states_by_rank):
        if digest is not None:
            seen.setdefault(digest, []).append((r, path))
    if len(seen) <= 1:
        return None
    parts = "; ".join(f"{sorted({p for _, p in rs})} on rank(s) {_ranks([r for r, _ in rs])}"
                      for rs in seen.values())
    return f"MULTIWRITE_TOPOLOGY names files with different contents: {parts}"
