# SPDX-License-Identifier: MIT
"""What every part of vcluster uses: the program's name and files, its user-facing error and its
progress lines."""

import os
import sys
import threading

PROG = "vcluster"
LAUNCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # launch/
COMMAND = os.path.join(LAUNCH_DIR, "vcluster")    # the executable (run again for the Python delay line)


class VClusterError(Exception):
    """A user-facing error: printed without a traceback."""


# one line at a time on stdout/stderr, whichever thread writes (progress lines, tagged node output)
print_lock = threading.Lock()
_quiet = False


def set_quiet(quiet):
    """--quiet: no progress lines (errors and the --keep instructions are still written)."""
    global _quiet
    _quiet = bool(quiet)


def log(msg):
    """A progress line on stderr: ``vcluster: <msg>``."""
    if _quiet:
        return
    with print_lock:
        sys.stderr.write(f"{PROG}: {msg}\n")
        sys.stderr.flush()
