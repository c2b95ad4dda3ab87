"""Writers and ingests: resume, offsets, verification, locking, abort, crash leftovers, fsync."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

import pytest

from ctrpy.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from ctrpy.manager.content import BlobAlreadyExists, ContentStore
from ctrpy.manager.content.ingest import dirname_for

from .content_helpers import put, sha256

DATA = b"0123456789abcdefghijklmnopqrstuvwxyz" * 1000


def ingest_dir(tmp_path: Path, ref: str) -> Path:
    return tmp_path / "root" / "content" / "ingest" / dirname_for(ref)


def test_ingest_layout(store: ContentStore, tmp_path: Path) -> None:
    ref = "tar-blobs/sha256/../../escape"
    with store.writer(ref, total=len(DATA), expected=sha256(DATA)) as writer:
        writer.write(DATA[:10])
    path = ingest_dir(tmp_path, ref)
    assert sorted(os.listdir(path)) == ["data", "expected", "ref", "startedat", "total", "updatedat"]
    assert (path / "ref").read_text() == ref
    assert (path / "data").read_bytes() == DATA[:10]
    assert (path / "total").read_text() == str(len(DATA))
    assert (path / "expected").read_text() == sha256(DATA)
    status = store.status(ref)
    assert (status.ref, status.offset, status.total, status.expected) == (
        ref, 10, len(DATA), sha256(DATA)
    )
    assert status.started_at <= status.updated_at


def test_resume_after_close(store: ContentStore) -> None:
    with store.writer("resume", total=len(DATA)) as writer:
        writer.write_at(0, DATA[:1000])
        assert writer.digest() == sha256(DATA[:1000])
    with store.writer("resume") as writer:
        status = writer.status()
        assert (status.offset, status.total) == (1000, len(DATA))
        assert writer.digest() == sha256(DATA[:1000])  # rebuilt from the data on disk
        writer.write_at(1000, DATA[1000:])
        assert writer.commit() == sha256(DATA)
    with pytest.raises(NotFound):
        store.status("resume")


def test_resume_in_a_new_store_object(tmp_path: Path) -> None:
    with ContentStore(tmp_path / "root").writer("again", total=len(DATA)) as writer:
        writer.write(DATA[:7])
    store = ContentStore(tmp_path / "root")
    assert store.status("again").offset == 7
    with store.writer("again") as writer:
        assert writer.digest() == sha256(DATA[:7])
        writer.write_at(7, DATA[7:])
        assert writer.commit(len(DATA), sha256(DATA)) == sha256(DATA)
    assert b"".join(store.read(sha256(DATA))) == DATA


def test_wrong_offset_is_out_of_range(store: ContentStore) -> None:
    with store.writer("offsets") as writer:
        writer.write_at(0, b"abc")
        for offset in (0, 2, 4, 100):
            with pytest.raises(OutOfRange, match=f"write @{offset} must occur at current offset 3"):
                writer.write_at(offset, b"x")
        assert writer.status().offset == 3
        assert writer.digest() == sha256(b"abc")
        assert writer.write_at(3, b"def") == 6


def test_truncate_restarts(store: ContentStore) -> None:
    with store.writer("restart") as writer:
        writer.write(b"wrong data")
        writer.truncate(0)
        assert writer.status().offset == 0
        with pytest.raises(InvalidArgument):
            writer.truncate(3)
        writer.write(b"right")
        assert writer.commit() == sha256(b"right")
    assert b"".join(store.read(sha256(b"right"))) == b"right"


def test_size_mismatch_keeps_ingest(store: ContentStore) -> None:
    writer = store.writer("size")
    writer.write(b"abc")
    with pytest.raises(FailedPrecondition, match="unexpected commit size 3, expected 4"):
        writer.commit(4)
    assert writer.closed
    assert store.status("size").offset == 3  # kept, and the lock is free again
    with store.writer("size") as again:
        assert again.commit(3) == sha256(b"abc")


def test_announced_total_is_kept_but_only_the_commits_size_is_checked(store: ContentStore) -> None:
    # As containerd's local store: the total is what a client announced (Status shows it);
    # the committer passes the size it wants checked.
    with store.writer("total", total=10) as writer:
        writer.write(b"short")
        assert store.status("total").total == 10
        with pytest.raises(FailedPrecondition, match="unexpected commit size 5, expected 10"):
            writer.commit(10)
    with store.writer("total") as writer:
        assert writer.commit() == sha256(b"short")


def test_digest_mismatch_keeps_ingest(store: ContentStore) -> None:
    with store.writer("digest") as writer:
        writer.write(b"abc")
        message = f"unexpected commit digest {sha256(b'abc')}, expected {sha256(b'abd')}"
        with pytest.raises(FailedPrecondition, match=message):
            writer.commit(3, sha256(b"abd"))
    assert store.status("digest").offset == 3
    assert not store.exists(sha256(b"abc"))


def test_announced_digest_is_kept_but_only_the_commits_is_checked(store: ContentStore) -> None:
    with store.writer("expected", expected=sha256(b"other")) as writer:
        writer.write(b"abc")
        assert store.status("expected").expected == sha256(b"other")
        with pytest.raises(FailedPrecondition, match="unexpected commit digest"):
            writer.commit(expected=sha256(b"other"))
    with store.writer("expected") as writer:
        assert writer.commit() == sha256(b"abc")


def test_commit_of_existing_blob(store: ContentStore, tmp_path: Path) -> None:
    digest = put(store, DATA, ref="first")
    before = store.info(digest)
    with store.writer("second") as writer:
        writer.write(DATA)
        with pytest.raises(AlreadyExists, match=f"content {digest}: already exists") as caught:
            writer.commit(len(DATA), digest)
    assert isinstance(caught.value, BlobAlreadyExists)
    assert (caught.value.digest, caught.value.size) == (digest, len(DATA))
    assert not ingest_dir(tmp_path, "second").exists()  # ingest removed in that case too
    assert store.info(digest) == before


def test_closed_writer_refuses_work(store: ContentStore) -> None:
    writer = store.writer("closed")
    writer.write(b"a")
    writer.close()
    writer.close()  # twice is fine
    for call in (lambda: writer.write(b"b"), lambda: writer.commit(), lambda: writer.truncate()):
        with pytest.raises(FailedPrecondition, match="closed"):
            call()
    assert writer.status().offset == 1


def test_second_writer_on_same_ref_is_unavailable(store: ContentStore, tmp_path: Path) -> None:
    writer = store.writer("busy")
    with pytest.raises(Unavailable, match="ref busy locked"):
        store.writer("busy")
    other = ContentStore(tmp_path / "root", lock_timeout=0)  # same root, same locks
    with pytest.raises(Unavailable):
        other.writer("busy")
    assert store.is_locked("busy")
    store.writer("not-busy").close()  # other refs are unaffected
    writer.close()
    assert not store.is_locked("busy")
    store.writer("busy").close()


def test_concurrent_opens_let_exactly_one_in(store: ContentStore) -> None:
    start = threading.Barrier(8)
    results: list[object] = []

    def open_it() -> None:
        start.wait()
        try:
            results.append(store.writer("race"))
        except Unavailable as error:
            results.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writers = [r for r in results if not isinstance(r, Unavailable)]
    assert len(writers) == 1
    writers[0].close()  # type: ignore[attr-defined]


def test_writer_waits_for_a_busy_ref(tmp_path: Path) -> None:
    store = ContentStore(tmp_path, lock_timeout=60)
    first = store.writer("wait")
    first.write(b"first")
    opened = []
    waiter = threading.Thread(target=lambda: opened.append(store.writer("wait")))
    waiter.start()
    first.close()
    waiter.join()
    assert opened[0].status().offset == 5
    opened[0].close()


def test_forgotten_writer_releases_its_lock(store: ContentStore) -> None:
    writer = store.writer("forgotten")
    del writer
    gc.collect()
    store.writer("forgotten").close()


def test_abort(store: ContentStore, tmp_path: Path) -> None:
    with store.writer("abort-me") as writer:
        writer.write(b"data")
    store.abort("abort-me")
    assert not ingest_dir(tmp_path, "abort-me").exists()
    with pytest.raises(NotFound, match='ingest ref "abort-me": not found'):
        store.abort("abort-me")
    with pytest.raises(NotFound):
        store.status("abort-me")
    with store.writer("abort-me") as writer:
        assert writer.status().offset == 0


def test_abort_under_an_open_writer(store: ContentStore) -> None:
    writer = store.writer("pulled")
    writer.write(b"data")
    store.abort("pulled")
    with pytest.raises(NotFound):
        writer.commit()
    assert not store.exists(sha256(b"data"))
    store.writer("pulled").close()  # lock released


@pytest.mark.parametrize("ref", ["", "nul\x00byte", "x" * 5000, "\udcff"])
def test_bad_refs(store: ContentStore, ref: str) -> None:
    for call in (store.writer, store.status, store.abort):
        with pytest.raises(InvalidArgument):
            call(ref)


@pytest.mark.parametrize("ref", ["../../etc", "/abs/path", "a b\nc", "ünïcode", "x" * 4096])
def test_any_reasonable_ref_is_a_safe_name(store: ContentStore, tmp_path: Path, ref: str) -> None:
    with store.writer(ref) as writer:
        writer.write(b"ok")
    assert ingest_dir(tmp_path, ref).is_dir()
    assert store.status(ref).ref == ref


def test_negative_total_is_invalid(store: ContentStore) -> None:
    with pytest.raises(InvalidArgument):
        store.writer("neg", total=-1)


def test_conflicting_total_starts_afresh(store: ContentStore) -> None:
    with store.writer("changed", total=100) as writer:
        writer.write(b"old")
    with store.writer("changed", total=200) as writer:
        assert (writer.status().offset, writer.status().total) == (0, 200)


def test_total_learned_later_is_kept(store: ContentStore) -> None:
    with store.writer("learn") as writer:
        writer.write(b"abc")
        writer.set_total(3)
        writer.set_expected(sha256(b"abc"))
    status = store.status("learn")
    assert (status.total, status.expected) == (3, sha256(b"abc"))
    with store.writer("learn") as writer:
        assert writer.commit() == sha256(b"abc")


# -- crash leftovers --


def test_ingest_without_ref_file_is_started_afresh(store: ContentStore, tmp_path: Path) -> None:
    with store.writer("crashed") as writer:
        writer.write(b"half")
    (ingest_dir(tmp_path, "crashed") / "ref").unlink()
    with pytest.raises(NotFound):
        store.status("crashed")
    assert store.list_statuses() == []
    with store.writer("crashed") as writer:
        assert writer.status().offset == 0
        assert writer.digest() == sha256(b"")
        writer.write(b"whole")
        assert writer.commit() == sha256(b"whole")


def test_ingest_without_data_is_started_afresh(store: ContentStore, tmp_path: Path) -> None:
    with store.writer("nodata") as writer:
        writer.write(b"half")
    (ingest_dir(tmp_path, "nodata") / "data").unlink()
    with pytest.raises(NotFound):
        store.status("nodata")
    with store.writer("nodata") as writer:
        assert writer.status().offset == 0


def test_ingest_with_damaged_metadata_still_resumes(store: ContentStore, tmp_path: Path) -> None:
    with store.writer("damaged", total=6) as writer:
        writer.write(b"abc")
    path = ingest_dir(tmp_path, "damaged")
    (path / "startedat").unlink()
    (path / "updatedat").write_text("garbage")
    (path / "total").write_text("")
    (path / "expected").write_text("sha256:nonsense")
    status = store.status("damaged")
    assert (status.offset, status.total, status.expected) == (3, 0, "")
    with store.writer("damaged") as writer:
        writer.write(b"def")
        assert writer.commit() == sha256(b"abcdef")


def test_ingest_whose_ref_does_not_match_its_name_is_ignored(
    store: ContentStore, tmp_path: Path
) -> None:
    with store.writer("one") as writer:
        writer.write(b"x")
    (ingest_dir(tmp_path, "one") / "ref").write_text("two")
    assert store.list_statuses() == []
    with pytest.raises(NotFound):
        store.status("one")


def test_half_created_ingest_is_invisible(store: ContentStore, tmp_path: Path) -> None:
    tmp = tmp_path / "root" / "content" / "ingest" / ".tmp-deadbeef"
    tmp.mkdir()
    (tmp / "ref").write_text("half")
    assert store.list_statuses() == []
    with store.writer("half") as writer:
        assert writer.status().offset == 0


# -- durability --


def test_data_is_fsynced_before_the_rename(
    store: ContentStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("rename", f"{os.fspath(src)} -> {os.fspath(dst)}"))
        real_rename(src, dst)

    with store.writer("durable") as writer:
        writer.write(DATA)
        data_path = str(ingest_dir(tmp_path, "durable").resolve() / "data")
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        digest = writer.commit()
    monkeypatch.undo()
    blob = tmp_path / "root" / "content" / "blobs" / "sha256" / digest.split(":")[1]
    fsync_data = events.index(("fsync", data_path))
    into_place = next(i for i, (kind, what) in enumerate(events) if kind == "rename"
                      and what.endswith(str(blob)))
    fsync_dir = events.index(("fsync", str(blob.parent.resolve())))
    assert fsync_data < into_place < fsync_dir
    assert blob.read_bytes() == DATA
