"""The progress bar of the stress test."""
import sys
import time

from .._util import format_duration


class Bar:
    """Rank 0's progress on stderr: a bar redrawn in place on a terminal, else a line every ``interval`` s."""

    def __init__(self, enabled, duration, interval):
        self.on = enabled
        self.tty = sys.stderr.isatty()
        self.duration, self.interval = duration, interval
        self.last = -1e9

    def show(self, elapsed, text, force=False):
        if not self.on:
            return
        now = time.monotonic()
        if not force and not self.tty and now - self.last < self.interval:
            return
        if not force and self.tty and now - self.last < 0.25:
            return
        self.last = now
        frac = min(1.0, elapsed / self.duration)
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        line = f"[{bar}] {frac * 100:5.1f}% {format_duration(elapsed)}/{format_duration(self.duration)} {text}"
        if self.tty:
            sys.stderr.write("\r" + line[:200] + "\033[K")
            if force:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
