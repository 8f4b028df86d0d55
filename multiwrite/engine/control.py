"""Control allgathers: small fixed-size integer tables that every rank of a group must agree on
(window sizes, fence counts, MoE count tables, all_to_all splits)."""
import numpy as np

from ..errors import MismatchError
from ..runtime.stats import Stats
from .gather import SmallPlan, gather_small, next_call, small_path


def allgather_int64(g, values, what="control allgather"):
    """int64 [size, len(values)]: one fixed-size control allgather of group ``g`` (every rank passes
    the same length).

    Small vectors go through the barrier-free small gather (engine/gather.py): one message per node
    pair crosses the network, where the transport's allgather takes several rounds that may each cross
    it (on the 2 x 4 virtual cluster dispatch's count table is agreed 2.2-2.6 ms after the first rank
    entered, against 2.9-3.3 ms through the transport's allgather). Its bytes are counted as control
    traffic. Ranks passing different lengths get a MismatchError."""
    vec = np.ascontiguousarray(values, dtype=np.int64).reshape(-1)
    g.stats.add_control(vec.nbytes)
    if not small_path(g.size, vec.nbytes):
        return g.transport.allgather_int64(vec)
    out = np.empty(g.size * vec.nbytes, dtype=np.uint8)
    stats, g.stats = g.stats, Stats()
    try:
        gather_small(g, SmallPlan.get(g, vec.nbytes), out, vec.view(np.uint8), *next_call(g, vec.nbytes, "int64"))
    except MismatchError as exc:
        raise MismatchError(f"{what}: ranks passed different numbers of values ({vec.size} on this "
                            f"rank) or called different operations: {exc}") from exc
    finally:
        g.stats = stats
    return out.view(np.int64).reshape(g.size, -1)
