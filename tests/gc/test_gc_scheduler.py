"""The scheduler driving a real collector over a real metadata database and content store:
when collections happen, what callers waiting for one get, and how it stops."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ctrpy import namespaces
from ctrpy.api.containerd.events import image_pb2
from ctrpy.errors import Unavailable
from ctrpy.manager.config import GcConfig
from ctrpy.manager.content import ContentStore
from ctrpy.manager.events import Exchange
from ctrpy.manager.gc import Collector, Scheduler
from ctrpy.manager.gc.labels import EXPIRE
from ctrpy.manager.gc.scheduler import go_duration
from ctrpy.manager.metadata.content import NamespacedContent
from ctrpy.manager.metadata.db import Database

LIMIT = 60.0


@dataclass
class Rig:
    db: Database
    content: NamespacedContent
    exchange: Exchange
    scheduler: Scheduler

    def blob(self, data: bytes, namespace: str = "ns") -> str:
        """Store ``data`` as a blob of ``namespace`` that nothing references; its digest."""
        with namespaces.using(namespace):
            sink = self.content.new_blob()
            try:
                sink.write(data)
                return sink.commit({}).digest
            finally:
                sink.close()

    def blob_exists(self, digest: str) -> bool:
        return self.content.store.exists(digest)


@asynccontextmanager
async def rig(tmp_path: Path, **policy: float) -> AsyncIterator[Rig]:
    db = Database(tmp_path / "meta.db")
    content = NamespacedContent(db, ContentStore(tmp_path))
    exchange = Exchange()
    scheduler = Scheduler(dataclasses.replace(GcConfig(startup_delay=0.0, schedule_delay=0.0), **policy))
    scheduler.start(Collector(db, content, {}, exchange))
    try:
        yield Rig(db, content, exchange, scheduler)
    finally:
        await scheduler.close()
        db.close()


async def until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + LIMIT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not so after {LIMIT:.0f}s")
        await asyncio.sleep(0.02)


def test_collect_now_removes_garbage_and_reports_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            digest = await asyncio.to_thread(r.blob, b"garbage")
            stats = await r.scheduler.collect_now()
            assert (stats.content_removed, stats.blobs_removed, stats.removed) == (1, 1, 1)
            assert not r.blob_exists(digest)
            assert r.scheduler.collections == 1  # no start-up collection with a delay of 0
            assert r.scheduler.last == stats
            assert r.scheduler.exports["Collections"] == "1"
            assert r.scheduler.exports["LastRemoved"] == "1"
            again = await r.scheduler.collect_now()
            assert again.removed == 0 and again.started_at >= stats.started_at

    asyncio.run(scenario())


def test_start_up_collection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, startup_delay=0.05) as r:
            await until(lambda: r.scheduler.collections >= 1, "start-up collection")

    asyncio.run(scenario())


def test_a_deletion_event_schedules_a_collection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, schedule_delay=0.05) as r:
            digest = await asyncio.to_thread(r.blob, b"left by a deleted image")
            r.exchange.publish("ns", "/images/delete", image_pb2.ImageDelete(name="gone"))
            await until(lambda: r.scheduler.collections >= 1, "collection after a deletion")
            assert not r.blob_exists(digest)

    asyncio.run(scenario())


def test_mutations_past_the_threshold_schedule_a_collection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path, mutation_threshold=3) as r:
            for number in range(3):
                r.exchange.publish("ns", "/images/create", image_pb2.ImageCreate(name=f"i{number}"))
            await until(lambda: r.scheduler.collections >= 1, "collection after three mutations")

    asyncio.run(scenario())


def test_a_lease_expiry_schedules_a_collection(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            soon = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
            r.scheduler.lease_created({EXPIRE: soon})
            await until(lambda: r.scheduler.collections >= 1, "collection at the lease's expiry")

    asyncio.run(scenario())


def test_a_failed_collection_is_reported_and_the_scheduler_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            await r.db.run(lambda: r.db.conn.execute("DROP TABLE lease_resources"))
            with pytest.raises(Unavailable, match="garbage collection failed"):
                await r.scheduler.collect_now()
            assert "lease_resources" in r.scheduler.exports["LastError"]
            assert r.scheduler.collections == 0

    asyncio.run(scenario())


def test_closing_answers_whoever_waits(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with rig(tmp_path) as r:
            await r.scheduler.close()
            with pytest.raises(Unavailable, match="not running"):
                await r.scheduler.collect_now()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "seconds, text", [(0, "0s"), (1.5, "1.5s"), (0.1, "100ms"), (0.0123, "12.3ms"), (2e-6, "2µs")]
)
def test_durations_print_as_go_does(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
