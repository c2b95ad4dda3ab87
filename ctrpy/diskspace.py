"""A full disk, said once: ENOSPC, EDQUOT and sqlite's SQLITE_FULL become ResourceExhausted.

Every store that writes (the content store's ingests, the snapshotters, the differ that unpacks
layers, the metadata databases) wraps its writes in :func:`guard`. When the filesystem runs out
of room, the guard first runs the store's cleanup, which removes what the failed operation
wrote, so that the next request finds the space it had before; then it raises
:class:`~ctrpy.errors.ResourceExhausted`, whose message names the operation and the mount point
of the filesystem that is full::

    no space left on device: writing ingest "default/layer-sha256:..." on the filesystem
    mounted at /var/lib/ctrpy: resource exhausted

The edge answers it with RESOURCE_EXHAUSTED, and the daemon keeps serving. Without the guard the
OSError would reach the edge as an UNKNOWN naming a Python exception, and the partial data
would stay on the full disk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable, Iterator

from ctrpy.errors import ResourceExhausted

__all__ = ["exhausted", "guard", "is_out_of_space", "mount_point", "reason"]

#: The errors that mean "no room", and how they read in a message.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}
_SQLITE_FULL = 13  # the primary result code; extended codes keep it in the low byte


def reason(error: BaseException) -> str | None:
    """``"no space left on device"`` or ``"disk quota exceeded"`` if ``error`` says the
    filesystem is out of room (an OSError, or sqlite's "database or disk is full"), else None."""
    if isinstance(error, OSError):
        return _REASONS.get(error.errno or 0)
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == _SQLITE_FULL:
            return _REASONS[errno.ENOSPC]
    return None


def is_out_of_space(error: BaseException) -> bool:
    """Whether ``error`` says the filesystem (or the user's quota on it) is full."""
    return reason(error) is not None


def mount_point(path: str | os.PathLike[str]) -> str:
    """The mount point of the filesystem holding ``path`` (or its nearest existing ancestor).

    Walks up while the device stays the same; symbolic links are resolved first, so the
    answer is where the data really lands.
    """
    current = os.path.realpath(os.fspath(path))
    while not os.path.exists(current) and current != os.sep:
        current = os.path.dirname(current)
    try:
        device = os.stat(current).st_dev
        while current != os.sep:
            parent = os.path.dirname(current)
            if os.stat(parent).st_dev != device:
                break
            current = parent
    except OSError:
        pass
    return current


def exhausted(error: BaseException, doing: str, path: str | os.PathLike[str]) -> ResourceExhausted:
    """The ResourceExhausted for ``error`` (which must be out-of-space) met while ``doing``
    something on the filesystem of ``path``."""
    why = reason(error) or _REASONS[errno.ENOSPC]
    return ResourceExhausted(f"{why}: {doing} on the filesystem mounted at {mount_point(path)}")


@contextlib.contextmanager
def guard(
    doing: str, path: str | os.PathLike[str], cleanup: Callable[[], None] | None = None
) -> Iterator[None]:
    """Turn an out-of-space error raised in the block into ResourceExhausted, after running
    ``cleanup`` (which should remove what the block wrote; its own failure is noted on the
    error, never raised instead). Other errors pass through untouched."""
    try:
        yield
    except (OSError, sqlite3.Error) as error:
        if not is_out_of_space(error):
            raise
        result = exhausted(error, doing, path)
        if cleanup is not None:
            try:
                cleanup()
            except Exception as failure:  # the disk error is the one to report
                result.add_note(f"cleanup after the full disk failed: {failure!r}")
        raise result from error
