"""What ctrpyd's start-up cleans (``ctrpy.manager.startup``), on directories built by hand."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.manager import startup
from ctrpy.manager.content import ContentStore
from tests.crash.support import mounts_under


@pytest.fixture
def tmp_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "tmpmounts"
    root.mkdir()
    try:
        yield root
    finally:
        for point in sorted(mounts_under(tmp_path), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def test_tmpmounts_are_unmounted_and_removed(tmp_root: Path) -> None:
    mounted = tmp_root / "ctrpy-mount-a"
    mounted.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mounted)], check=True)
    (mounted / "inside").write_text("x")
    (tmp_root / "ctrpy-mount-b").mkdir()
    (tmp_root / "stray-file").write_text("")
    cleaned = startup.clean_tmpmounts(tmp_root)
    assert sorted((c.kind, Path(c.path).name, c.detail) for c in cleaned) == [
        ("tmpmount", "ctrpy-mount-a", "unmounted and removed"),
        ("tmpmount", "ctrpy-mount-b", "removed"),
        ("tmpmount", "stray-file", "removed"),
    ]
    assert list(tmp_root.iterdir()) == [] and mounts_under(tmp_root) == []
    assert startup.clean_tmpmounts(tmp_root.parent / "missing") == []


def test_a_directory_with_files_is_not_a_mount_point_and_stays(tmp_root: Path) -> None:
    full = tmp_root / "ctrpy-mount-c"
    full.mkdir()
    (full / "data").write_text("not ours to delete")
    assert startup.clean_tmpmounts(tmp_root) == []
    assert (full / "data").exists()


def test_ingest_leftovers_go_and_resumable_ingests_stay(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "root")
    with store.writer("kept", total=10) as writer:
        writer.write(b"12345")
    kept = next(p for p in store.ingest_root.iterdir())
    (kept / "total.tmp").write_text("10")  # a metadata update cut short
    (store.ingest_root / ".tmp-0123").mkdir()  # a create cut short
    (store.ingest_root / ".trash-4567").mkdir()  # a remove cut short
    broken = store.ingest_root / ("0" * 64)
    broken.mkdir()  # no ref, no data
    cleaned = startup.clean_ingests(store)
    assert sorted((c.kind, Path(c.path).name) for c in cleaned) == [
        ("broken-ingest", "0" * 64),
        ("ingest-temp", ".tmp-0123"),
        ("ingest-temp", ".trash-4567"),
        ("ingest-temp", "total.tmp"),
    ]
    assert [p.name for p in store.ingest_root.iterdir()] == [kept.name]
    assert store.status("kept").offset == 5
