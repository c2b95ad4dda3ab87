"""Server-wide facts kept in the metadata database (the UUID that `ctr version` shows)."""

from __future__ import annotations

import uuid

from .db import Database


def server_uuid(db: Database) -> str:
    """The server's UUID, made on first start and kept across restarts. Database thread only."""
    with db.transaction() as conn:
        row = conn.execute("SELECT value FROM server WHERE key = 'uuid'").fetchone()
        if row is not None:
            return str(row[0])
        value = str(uuid.uuid4())
        conn.execute("INSERT INTO server (key, value) VALUES ('uuid', ?)", (value,))
        return value
