"""Snapshots.Remove deletes the row in the call and leaves the backend's directories to a
background task of the store, as containerd leaves them to its collector (issue 13).

What can be checked without timing: the directories do go (polled), a parent removed right
after its child and a collection right after a removal give no error, and a backend removal
that fails is logged and left for cleanup(). Store-level tests use a real native backend; the
one failure is injected by a wrapper (fault injection only).
"""

from __future__ import annotations

import asyncio
import errno
import threading
from typing import Any

import pytest

from ctrpy import namespaces
from ctrpy.manager.metadata import snapshots as snapshots_module
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.snapshots import SnapshotStore
from ctrpy.snapshotter.native import NativeSnapshotter
from tests.gc.helpers import backend_snapshots, collect, ok
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until


class FailingRemovals:
    """A native backend whose ``remove`` of the keys in ``failing`` raises EBUSY (as a mount
    held by someone else would); everything else is the real backend's."""

    def __init__(self, backend: NativeSnapshotter) -> None:
        self._backend = backend
        self.failing: set[str] = set()

    def remove(self, key: str) -> None:
        if key in self.failing:
            raise OSError(errno.EBUSY, "device or resource busy (injected)", key)
        self._backend.remove(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


class BlockingRemovals:
    """A native backend whose ``remove`` of ``held`` waits until ``release`` (a slow disk)."""

    def __init__(self, backend: NativeSnapshotter) -> None:
        self._backend = backend
        self.held = ""
        self.release = threading.Event()

    def remove(self, key: str) -> None:
        if key == self.held:
            assert self.release.wait(60), "never released"
        self._backend.remove(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


class Recorder:
    """Stands in for the module's logger: what was logged, by level."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def _record(self, level: str) -> Any:
        def log(event: str, **fields: Any) -> None:
            self.events.append((level, event, fields))

        return log

    def __getattr__(self, level: str) -> Any:
        return self._record(level)


def _dirs(backend: NativeSnapshotter) -> list[str]:
    return sorted(p.name for p in (backend.root / "snapshots").iterdir())


async def _layers(store: SnapshotStore) -> None:
    """base <- layer <- work (active)."""
    await store.prepare("base-a", "")
    await store.commit("base", "base-a")
    await store.prepare("layer-a", "base")
    await store.commit("layer", "layer-a")
    await store.prepare("work", "layer")


def test_directories_go_after_remove_children_first(meta_and_native: tuple[Database, NativeSnapshotter]) -> None:
    """Child, then its parent, then the grandparent, each right after the other: no error, and
    the backend ends empty with nothing left for cleanup()."""
    db, backend = meta_and_native
    store = SnapshotStore(db, "native", backend)

    async def work() -> int:
        await _layers(store)
        await store.remove("work")
        await store.remove("layer")
        await store.remove("base")
        assert await store.walk() == []
        for _ in range(600):  # poll: up to 30 s on a loaded machine
            if not list(backend.walk()):
                break
            await asyncio.sleep(0.05)
        removed = await store.cleanup()
        await store.aclose()
        return removed

    with namespaces.using("default"):
        assert asyncio.run(work()) == 0  # the background removals did it all
    assert list(backend.walk()) == []
    assert _dirs(backend) == []


def test_cleanup_at_once_after_remove(meta_and_native: tuple[Database, NativeSnapshotter]) -> None:
    """A collection's cleanup right after (or together with) a Remove: no error, and every
    backend snapshot goes exactly once."""
    db, backend = meta_and_native
    store = SnapshotStore(db, "native", backend)
    recorder = Recorder()

    async def work() -> None:
        await _layers(store)
        await store.remove("work")
        await store.cleanup()  # queued at once: waited for, not raced
        await asyncio.gather(store.remove("layer"), store.cleanup(), store.remove("base"), store.cleanup())
        await store.cleanup()
        await store.aclose()

    with pytest.MonkeyPatch.context() as patch, namespaces.using("default"):
        patch.setattr(snapshots_module, "log", recorder)
        asyncio.run(work())
    assert list(backend.walk()) == []
    assert _dirs(backend) == []
    assert [e for e in recorder.events if e[0] in ("warning", "error")] == []


def test_cleanup_waits_for_queued_removals(meta_and_native: tuple[Database, NativeSnapshotter]) -> None:
    """A collection that swept a parent's row while its child's directory is still being
    removed: cleanup() waits for that removal, then takes the parent too, without a warning."""
    db, native = meta_and_native
    backend = BlockingRemovals(native)
    store = SnapshotStore(db, "native", backend)  # type: ignore[arg-type]
    recorder = Recorder()

    async def work() -> int:
        await _layers(store)
        backend.held = next(i.name for i in native.walk() if i.name.endswith("/work"))
        await store.remove("work")  # answered; its directory waits for the slow disk
        await store.remove("layer")  # queued behind it
        await db.run(store._tables.delete, "default", "base", None)  # as the collector's sweep does
        cleanup = asyncio.ensure_future(store.cleanup())
        await asyncio.sleep(0.2)
        backend.release.set()
        removed = await cleanup
        await store.aclose()
        return removed

    with pytest.MonkeyPatch.context() as patch, namespaces.using("default"):
        patch.setattr(snapshots_module, "log", recorder)
        assert asyncio.run(work()) == 1  # "base", once its children had gone
    assert list(native.walk()) == [] and _dirs(native) == []
    assert [e for e in recorder.events if e[0] in ("warning", "error")] == []


def test_failed_backend_removal_is_logged_and_left_for_cleanup(meta_and_native: tuple[Database, NativeSnapshotter]) -> None:
    db, native = meta_and_native
    backend = FailingRemovals(native)
    store = SnapshotStore(db, "native", backend)  # type: ignore[arg-type]
    recorder = Recorder()

    async def work() -> tuple[set[str], int]:
        await store.prepare("busy", "")
        (info,) = list(native.walk())
        backend.failing.add(info.name)
        await store.remove("busy")  # the client sees success: the row is gone
        await store.aclose()
        left = {i.name for i in native.walk()}
        backend.failing.clear()  # the mount went away: the next collection takes it
        return left, await store.cleanup()

    with pytest.MonkeyPatch.context() as patch, namespaces.using("default"):
        patch.setattr(snapshots_module, "log", recorder)
        left, removed = asyncio.run(work())
    assert left == {"default/1/busy"}
    assert removed == 1
    assert list(native.walk()) == [] and _dirs(native) == []
    (warning,) = [e for e in recorder.events if e[0] == "warning"]
    assert warning[1] == "backend snapshot left for cleanup"
    assert warning[2]["key"] == "default/1/busy" and "busy" in warning[2]["error"]


def test_image_layers_go_after_the_container_snapshot(daemon: Daemon) -> None:
    """Through the stock ctr: a container's snapshot removed, then at once its parents and a
    collection (as an image removal does); no error, and the directories go."""
    ok(daemon.ctr("snapshots", "prepare", "base-a", ""))
    ok(daemon.ctr("snapshots", "commit", "base", "base-a"))
    ok(daemon.ctr("snapshots", "prepare", "rootfs", "base"))
    assert len(backend_snapshots(daemon)) == 2
    ok(daemon.ctr("snapshots", "rm", "rootfs"))
    ok(daemon.ctr("snapshots", "rm", "base"))
    collect(daemon)
    wait_until(lambda: not backend_snapshots(daemon), "the snapshot directories to go")
    assert ok(daemon.ctr("snapshots", "ls")).stdout.splitlines()[1:] == []


def test_stopping_waits_for_queued_removals(daemon: Daemon) -> None:
    """ctrpyd stopping right after a Remove waits (briefly) for the directory to go."""
    ok(daemon.ctr("snapshots", "prepare", "short-lived", ""))
    assert len(backend_snapshots(daemon)) == 1
    ok(daemon.ctr("snapshots", "rm", "short-lived"))
    daemon.stop()
    assert backend_snapshots(daemon) == []
