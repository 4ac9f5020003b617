"""Seeing a child process exit without reaping it: a pidfd where there is one, else a ``waitid`` poll.

The child stays unreaped, so its pid (and the id of the process group it leads) cannot be
reused while its owner still signals it. ``CommandExecution`` and ``PythonProcess`` share this.
"""

from __future__ import annotations

import os
import select
import time

__all__ = ["EXIT_POLL", "LONGEST_POLL", "exited_within", "has_exited", "open_pidfd"]

#: Wait for exits on a pidfd (Linux >= 5.3). Tests switch it off to cover the portable way.
USE_PIDFD = hasattr(os, "pidfd_open")
#: Without a pidfd: the first and the longest pause between two exit checks, in seconds.
EXIT_POLL = (0.0005, 0.05)
#: Seconds one poll() sleeps at most: it cannot take a timeout of years (a script's may be a year).
LONGEST_POLL = 3600.0


def open_pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits; ``None``: poll :func:`has_exited` instead."""
    if not USE_PIDFD:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # ENOSYS before Linux 5.3, or a sandbox forbids it
        return None


def has_exited(pid: int) -> bool:
    """Whether the child has exited, leaving it unreaped (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped by someone else: gone all the same
        return True


def exited_within(pid: int, pidfd: int | None, timeout: float) -> bool:
    """Whether the child exits within ``timeout`` seconds (0: only whether it has)."""
    if pidfd is not None:
        return bool(select.select([pidfd], [], [], timeout)[0])
    deadline = time.monotonic() + timeout
    pause = EXIT_POLL[0]
    while not has_exited(pid):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))  # no descriptor to wait on: this is the portable way
        pause = min(pause * 2, EXIT_POLL[1])
    return True
