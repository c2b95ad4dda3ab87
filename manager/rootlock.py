"""The root's lock: one process at a time changes a root.

ctrpyd holds an exclusive ``flock`` on ``<root>/ctrpyd.lock`` for as long as it serves, so two
daemons never share one store. ``ctrpy doctor`` probes the same lock to report, and holds it
itself while it repairs, so that a ctrpyd started meanwhile refuses the root instead of racing it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ctrpy.errors import Unavailable

__all__ = ["LOCK_FILE", "daemon_running", "holding_root"]

LOCK_FILE = "ctrpyd.lock"


def daemon_running(root: Path) -> bool:
    """Whether a process holds ``<root>/ctrpyd.lock`` (a ctrpyd serving that root).

    Creates nothing: without the file, no ctrpyd has ever run there.
    """
    try:
        fd = os.open(root / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's lock, if it got it
    return False


@contextlib.contextmanager
def holding_root(root: Path) -> Iterator[None]:
    """Hold ``<root>/ctrpyd.lock`` for the ``with`` block (ctrpyd while it serves, the doctor
    while it repairs).

    Raises Unavailable when a ctrpyd (or another doctor) holds it. A root that does not
    exist is left alone (there is nothing there to protect).
    """
    if not root.is_dir():
        yield
        return
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Unavailable(f"root {root} is in use by another ctrpyd (or ctrpy doctor)") from None
        yield
    finally:
        os.close(fd)
