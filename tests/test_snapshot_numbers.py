"""Backend key numbers are reserved in meta.db a block at a time: a prepare takes one without
writing, numbers are never handed out twice, not even across a restart (a new store on the same
database), and a commit's backend name takes one the same way."""

from __future__ import annotations

import asyncio

from ctrpy import namespaces
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.snapshot_tables import NUMBERS_AT_ONCE
from ctrpy.manager.metadata.snapshots import SnapshotStore
from ctrpy.snapshotter.native import NativeSnapshotter


def _numbers(backend: NativeSnapshotter) -> dict[str, int]:
    return {i.name.split("/", 2)[2]: int(i.name.split("/", 2)[1]) for i in backend.walk()}


def _last(db: Database) -> int:
    return int(db.call(lambda: db.conn.execute("SELECT last FROM snapshot_sequences").fetchone()[0]))


def test_numbers_come_from_reserved_blocks(meta_and_native: tuple[Database, NativeSnapshotter]) -> None:
    db, backend = meta_and_native

    async def first() -> None:
        store = SnapshotStore(db, "native", backend)
        await store.prepare("a")
        await store.prepare("b")
        await store.commit("b-done", "b")

    with namespaces.using("ns"):
        asyncio.run(first())
    assert _numbers(backend) == {"a": 1, "b-done": 3}  # "b" had 2 until its commit
    assert _last(db) == NUMBERS_AT_ONCE

    async def after_a_restart() -> None:
        await SnapshotStore(db, "native", backend).prepare("c", "b-done")

    with namespaces.using("ns"):
        asyncio.run(after_a_restart())
    assert _numbers(backend)["c"] == NUMBERS_AT_ONCE + 1  # the rest of the first block is skipped
    assert _last(db) == 2 * NUMBERS_AT_ONCE


def test_a_prepare_within_a_block_writes_nothing_before_its_row(meta_and_native: tuple[Database, NativeSnapshotter]) -> None:
    db, backend = meta_and_native
    store = SnapshotStore(db, "native", backend)

    async def work() -> tuple[int, int]:
        await store.prepare("first")
        tables = store._tables  # the plan alone: checks and a number from the block
        before = await db.run(lambda: db.conn.total_changes)
        await db.run(tables.plan_create, "ns", "second", "", None)
        return before, await db.run(lambda: db.conn.total_changes)

    with namespaces.using("ns"):
        before, after = asyncio.run(work())
    assert after == before
