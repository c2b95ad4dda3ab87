"""deferred_sync: commits inside it skip the WAL's fsync (synchronous NORMAL), commits outside
it and the ones that ask for ``sync`` keep it (FULL), and the connection is back at FULL after
the block whatever happened in it. CRI's CreateContainer uses it for the writes before its last,
fsynced, commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy import namespaces
from ctrpy.manager.metadata.db import Database, deferred_sync
from ctrpy.manager.metadata.snapshots import SnapshotStore
from ctrpy.snapshotter.native import NativeSnapshotter

NORMAL, FULL = 1, 2


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "meta.db")
    try:
        yield database
    finally:
        database.close()


def _level_in_a_write(db: Database, *, sync: bool = False) -> int:
    with db.transaction(sync=sync) as conn:
        conn.execute("INSERT OR REPLACE INTO server (key, value) VALUES ('probe', 'x')")
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])


def _level(db: Database) -> int:
    return int(db.conn.execute("PRAGMA synchronous").fetchone()[0])


def test_writes_inside_the_block_skip_the_fsync_and_the_rest_keep_it(db: Database) -> None:
    async def main() -> None:
        assert await db.run(_level_in_a_write, db) == FULL
        with deferred_sync():
            assert await db.run(_level_in_a_write, db) == NORMAL
            assert await db.run(_level_in_a_write, db, sync=True) == FULL
            # Tasks started inside the block carry it (asyncio copies the context).
            assert await asyncio.gather(db.run(_level_in_a_write, db)) == [NORMAL]
        assert await db.run(_level, db) == FULL
        assert await db.run(_level_in_a_write, db) == FULL

    asyncio.run(main())


def test_a_failed_write_leaves_the_connection_at_full(db: Database) -> None:
    def fails() -> None:
        with db.transaction() as conn:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

    async def main() -> None:
        with deferred_sync(), pytest.raises(sqlite3.OperationalError):
            await db.run(fails)
        assert await db.run(_level, db) == FULL

    asyncio.run(main())


def test_reserving_backend_numbers_is_fsynced_even_inside_the_block(
    meta_and_native: tuple[Database, NativeSnapshotter],
) -> None:
    """A number handed out must stay used after a power cut, so its reservation is no
    deferred write; the snapshot's own row is."""
    db, backend = meta_and_native
    statements: list[str] = []
    db.call(lambda: db.conn.set_trace_callback(statements.append))
    try:
        async def main() -> None:
            with deferred_sync():
                await SnapshotStore(db, "native", backend).prepare("a")

        with namespaces.using("ns"):
            asyncio.run(main())
    finally:
        db.call(lambda: db.conn.set_trace_callback(None))

    def level_before(index: int) -> str:
        pragmas = [s for s in statements[:index] if s.startswith("PRAGMA synchronous")]
        return pragmas[-1] if pragmas else "PRAGMA synchronous = FULL"

    reserve = next(i for i, s in enumerate(statements) if "snapshot_sequences" in s)
    row = next(i for i, s in enumerate(statements) if s.startswith("INSERT INTO snapshots"))
    assert level_before(reserve) == "PRAGMA synchronous = FULL"
    assert level_before(row) == "PRAGMA synchronous = NORMAL"
