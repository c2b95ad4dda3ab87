"""The sqlite metadata store: schema versions, migrations, transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ctrpy.errors import AlreadyExists, FailedPrecondition, Unavailable
from ctrpy.snapshotter.storage import MIGRATIONS, MetaStore
from ctrpy.snapshotter.types import Kind, Usage


def test_fresh_database_is_at_the_latest_version(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "metadata.db")
    try:
        assert store.schema_version == len(MIGRATIONS)
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "metadata.db")
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"snapshots", "labels"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.parametrize("version", range(len(MIGRATIONS)))
def test_each_migration_brings_an_older_file_up_to_date(tmp_path: Path, version: int) -> None:
    """Apply the migrations up to ``version`` by hand, then let MetaStore do the rest."""
    path = tmp_path / "metadata.db"
    conn = sqlite3.connect(path)
    for sql in MIGRATIONS[:version]:
        conn.executescript(sql)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    store = MetaStore(path)
    try:
        assert store.schema_version == len(MIGRATIONS)
        with store.transaction(writable=True) as tx:
            s = tx.create_snapshot(Kind.ACTIVE, "k", "", {"a": "b"})
            tx.commit_active("k", "n", Usage(10, 2), {"c": "d"})
        with store.transaction() as tx:
            sid, info, usage = tx.get_info("n")
        assert (sid, info.kind, dict(info.labels), usage) == (s.id, Kind.COMMITTED, {"c": "d"}, Usage(10, 2))
    finally:
        store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(FailedPrecondition, match="newer"):
        MetaStore(path)


def test_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "metadata.db")
    try:
        with pytest.raises(AlreadyExists), store.transaction(writable=True) as tx:
            tx.create_snapshot(Kind.ACTIVE, "a", "", None)
            tx.create_snapshot(Kind.ACTIVE, "a", "", None)
        with store.transaction() as tx:
            assert tx.infos() == [] and tx.ids() == set()
        with pytest.raises(RuntimeError), store.transaction() as tx:
            tx.create_snapshot(Kind.ACTIVE, "b", "", None)
    finally:
        store.close()


def test_ids_are_never_reused(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "metadata.db")
    try:
        with store.transaction(writable=True) as tx:
            first = tx.create_snapshot(Kind.ACTIVE, "a", "", None).id
            tx.remove("a")
            second = tx.create_snapshot(Kind.ACTIVE, "a", "", None).id
        assert second > first
    finally:
        store.close()


def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = MetaStore(tmp_path / "metadata.db")
    store.close()
    store.close()
    with pytest.raises(Unavailable), store.transaction():
        pass
