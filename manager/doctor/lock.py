"""Whether a ctrpyd runs on a root, and keeping one from starting while the doctor repairs.

ctrpyd holds an exclusive ``flock`` on ``<root>/ctrpyd.lock`` for as long as it runs (see
``ctrpy.manager.server``). The doctor only probes that lock to report, and holds it itself
while it repairs, so that a ctrpyd started meanwhile refuses the root instead of racing it.
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
    """Hold ``<root>/ctrpyd.lock`` for the ``with`` block, as ctrpyd does while it serves.

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
            raise Unavailable(f"root {root} is in use by a running ctrpyd") from None
        yield
    finally:
        os.close(fd)
