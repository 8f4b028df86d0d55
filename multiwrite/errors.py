"""Exceptions raised by multiwrite. Every error names the problem and, where useful, the rank."""


class MultiwriteError(RuntimeError):
    """Base class of multiwrite runtime errors."""


class MultiwriteTimeout(MultiwriteError, TimeoutError):
    """A peer did not answer within the group timeout (it died, hangs, or never called the operation)."""


class MismatchError(MultiwriteError, ValueError):
    """Ranks called a collective with arguments that do not agree (sizes, dtypes, operation)."""


class WindowError(MultiwriteError, ValueError):
    """Misuse of a window: out-of-window write, rank outside the group, use after free."""
