"""Reading ctrpy's sqlite files without changing them.

The doctor reads meta.db and every snapshotter's metadata.db through read-only connections,
so that looking never writes (a running ctrpyd keeps its files to itself; a crashed one's
write-ahead log is read, not checkpointed). Writes go through the owners' own code
(``ctrpy.manager.metadata``, ``ctrpy.snapshotter``), only while the doctor holds the root.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

__all__ = ["has_table", "reading", "schema_version"]

BUSY_TIMEOUT_MS = 5000


@contextlib.contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the database at ``path`` for the ``with`` block (None when
    the file does not exist)."""
    if not path.is_file():
        yield None
        return
    uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        yield conn
    finally:
        conn.close()


def schema_version(conn: sqlite3.Connection) -> int:
    """``PRAGMA user_version``."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the database has a table ``name``."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None
