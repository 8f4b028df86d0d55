"""Exceptions raised by multiwrite. Every error names the problem and, where useful, the rank."""


class MultiwriteError(RuntimeError):
    """Base class of multiwrite runtime errors."""


class MultiwriteTimeout(MultiwriteError, TimeoutError):
    """A peer did not answer within the group timeout (it died, hangs, or never called the operation)."""


class MismatchError(MultiwriteError, ValueError):
    """Ranks called a collective with arguments that do not agree (sizes, dtypes, operation)."""


class WindowError(MultiwriteError, ValueError):
    """Misuse of a window: out-of-window write, rank outside the group, use after free."""


class PeerFailure(MultiwriteError):
    """A peer is gone: its connection broke or MPI reports it dead (``rank`` names it when known).

    Unlike MismatchError it says nothing about the arguments: the peer died or was killed; unlike
    MultiwriteTimeout it came at once, from the transport, not from waiting."""

    def __init__(self, message, rank=None):
        super().__init__(message)
        self.rank = rank
