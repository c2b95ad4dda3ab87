"""One writer per ingest: an in-process table of held ingest locks.

containerd's local store holds a process-wide map of locked refs; a second ``Writer`` for a ref
that is being written fails with ``ref <ref> locked ...: unavailable``. ctrpy does the same,
keyed by the ingest directory (the store's real path and the hash of the ref), so that two
:class:`~ctrpy.manager.content.store.ContentStore` objects over one root share their locks, and
cleanup, which sees only directory names, can tell which ingests are in use.

containerd retries for up to about a second before giving up, because a client that closes a
stream and opens the next one at once can arrive before the server has released the first
writer. Here :meth:`LockTable.acquire` waits up to a given timeout on a condition variable
instead of sleeping.

The table covers one process: ctrpyd is the only writer of its content root.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from ctrpy.errors import Unavailable

Key = tuple[str, str]


class LockTable:
    """Exclusive, non-reentrant locks named by ``(root, name)``, remembering when each was taken."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[Key, tuple[float, float]] = {}  # key -> (monotonic, wall clock)

    def acquire(self, key: Key, ref: str, timeout: float = 0.0) -> None:
        """Take the lock ``key`` for ``ref``, waiting up to ``timeout`` seconds.

        Raises Unavailable (``ref <ref> locked for <seconds>s (since <time>)``) if it is still
        held after that.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while key in self._held:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    since_mono, since_wall = self._held[key]
                    held_for = time.monotonic() - since_mono
                    since = datetime.fromtimestamp(since_wall, UTC).isoformat()
                    raise Unavailable(f"ref {ref} locked for {held_for:.3f}s (since {since})")
                self._cond.wait(remaining)
            self._held[key] = (time.monotonic(), time.time())

    def release(self, key: Key) -> None:
        """Give the lock back (a no-op when it is not held) and wake one waiter."""
        with self._cond:
            if self._held.pop(key, None) is not None:
                self._cond.notify_all()

    def is_held(self, key: Key) -> bool:
        """Whether someone holds ``key`` right now."""
        with self._cond:
            return key in self._held


#: The process-wide table that every store shares.
TABLE = LockTable()
