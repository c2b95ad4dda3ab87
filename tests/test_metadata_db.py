"""The metadata database: its migrations, and refusal of a schema newer than the code."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ctrpy.manager.metadata import db as metadata_db


def test_each_migration_applies_in_order_and_records_its_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)
    for number in range(1, len(metadata_db.MIGRATIONS) + 1):
        assert metadata_db.migrate(conn, metadata_db.MIGRATIONS[:number]) == number
        assert conn.execute("PRAGMA user_version").fetchone()[0] == number
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"server", "namespaces", "containers", "images", "leases", "lease_resources", "content"} <= tables
    # Running again is a no-op.
    assert metadata_db.migrate(conn) == len(metadata_db.MIGRATIONS)


def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        metadata_db.migrate(conn, [*metadata_db.MIGRATIONS, broken])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(metadata_db.MIGRATIONS)
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)
    conn.execute("PRAGMA user_version = 999")
    with pytest.raises(RuntimeError, match="newer than this ctrpyd"):
        metadata_db.migrate(conn)
