"""Blobs: write, commit and read back; ranged reads; info, walk, delete; digest validation."""

from __future__ import annotations

import os
import stat
import tracemalloc
from pathlib import Path

import pytest

from ctrpy.errors import InvalidArgument, NotFound, OutOfRange
from ctrpy.manager.content import EMPTY_DIGEST, ContentStore

from .content_helpers import put, sha256


def test_layout_and_round_trip(store: ContentStore, tmp_path: Path) -> None:
    data = b"hello, content\n"
    digest = put(store, data)
    assert digest == sha256(data)
    blob = tmp_path / "root" / "content" / "blobs" / "sha256" / digest.split(":")[1]
    assert blob.read_bytes() == data
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert os.listdir(tmp_path / "root" / "content" / "ingest") == []
    assert b"".join(store.read(digest)) == data
    with store.reader(digest) as stream:
        assert stream.read() == data
    info = store.info(digest)
    assert (info.digest, info.size) == (digest, len(data))
    assert info.created_at.tzinfo is not None
    assert store.exists(digest)


def test_empty_blob(store: ContentStore) -> None:
    with store.writer("empty") as writer:
        assert writer.digest() == EMPTY_DIGEST
        assert writer.commit() == EMPTY_DIGEST
    assert store.info(EMPTY_DIGEST).size == 0
    assert list(store.read(EMPTY_DIGEST)) == []
    assert list(store.read(EMPTY_DIGEST, offset=0, size=10)) == []
    with pytest.raises(OutOfRange):
        store.read(EMPTY_DIGEST, offset=1)


def test_multi_megabyte_blob_in_32k_windows(store: ContentStore) -> None:
    data = os.urandom(5 * (1 << 20) + 12345)
    digest = put(store, data)
    assert store.info(digest).size == len(data)
    window = 32 * 1024
    pieces = []
    for offset in range(0, len(data), window):  # how `ctr images export` reads a layer
        pieces.append(b"".join(store.read(digest, offset=offset, size=window)))
        assert len(pieces[-1]) == min(window, len(data) - offset)
    assert b"".join(pieces) == data


def test_ranged_reads(store: ContentStore) -> None:
    data = bytes(range(256)) * 4
    digest = put(store, data)
    assert b"".join(store.read(digest, 10, 20)) == data[10:30]
    assert b"".join(store.read(digest, 1000)) == data[1000:]  # size 0: to the end
    assert b"".join(store.read(digest, 1000, 500)) == data[1000:]  # cut at the end
    assert b"".join(store.read(digest, len(data))) == b""  # at the end: nothing
    assert b"".join(store.read(digest, -5, 3)) == data[:3]  # containerd clamps to 0
    assert b"".join(store.read(digest, 0, -1)) == data
    chunks = list(store.read(digest, 0, 0, chunk_size=100))
    assert [len(c) for c in chunks] == [100] * 10 + [24]
    with pytest.raises(OutOfRange, match="read past object length 1024 bytes"):
        store.read(digest, len(data) + 1)


def test_read_checks_before_first_chunk(store: ContentStore) -> None:
    missing = sha256(b"missing")
    with pytest.raises(NotFound, match=f"content {missing}: not found"):
        store.read(missing)  # raises at the call, not at iteration


def test_abandoned_read_closes_file(store: ContentStore) -> None:
    digest = put(store, b"x" * 300)
    before = len(os.listdir("/proc/self/fd"))
    chunks = store.read(digest, chunk_size=100)
    next(chunks)
    chunks.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_large_blob_streams_without_holding_it(store: ContentStore) -> None:
    chunk = os.urandom(1 << 20)
    tracemalloc.start()
    try:
        with store.writer("big") as writer:
            for i in range(24):
                writer.write(i.to_bytes(4, "big") + chunk[4:])
            digest = writer.commit()
        total = sum(len(piece) for piece in store.read(digest))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 24 << 20
    assert peak < 8 << 20  # a few chunks at most, never the 24 MiB blob


def test_info_walk_delete(store: ContentStore) -> None:
    blobs = {put(store, bytes([i]) * (i + 1), ref=f"r{i}"): i + 1 for i in range(5)}
    assert {info.digest: info.size for info in store.walk()} == blobs
    victim = next(iter(blobs))
    store.delete(victim)
    assert not store.exists(victim)
    assert victim not in {info.digest for info in store.walk()}
    with pytest.raises(NotFound, match=f"content {victim}: not found"):
        store.delete(victim)
    with pytest.raises(NotFound):
        store.info(victim)
    with pytest.raises(NotFound):
        store.reader(victim)


def test_walk_skips_strays(store: ContentStore, tmp_path: Path) -> None:
    digest = put(store, b"real")
    blobs = tmp_path / "root" / "content" / "blobs"
    (blobs / "sha256" / "not-a-digest").write_text("x")
    (blobs / "md5").mkdir()
    (blobs / "md5" / ("0" * 32)).write_text("x")
    assert [info.digest for info in store.walk()] == [digest]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "sha256",
        "sha256:",
        "abc",
        "sha256:" + "A" * 64,  # upper case
        "sha256:" + "0" * 63,
        "sha256:" + "0" * 65,
        "sha256:" + "g" * 64,
        "md5:" + "0" * 32,
        "sha256:../../../etc/passwd",
        "sha256:" + "0" * 63 + "/",
        ":" + "0" * 64,
        "sha512:" + "0" * 64,
    ],
)
def test_bad_digests_are_invalid_arguments(store: ContentStore, bad: str) -> None:
    for call in (store.info, store.exists, store.delete, store.reader, store.read):
        with pytest.raises(InvalidArgument):
            call(bad)
    if bad:  # "" means "no expectation" to a writer
        with pytest.raises(InvalidArgument):
            store.writer("ref", expected=bad)


def test_sha512_digests(store: ContentStore) -> None:
    import hashlib

    data = b"sha512 content"
    expected = "sha512:" + hashlib.sha512(data).hexdigest()
    with store.writer("five-twelve") as writer:
        writer.write(data)
        assert writer.commit(expected=expected) == expected
    assert store.exists(expected)
    assert not store.exists(sha256(data))
    assert b"".join(store.read(expected)) == data
    assert expected in {info.digest for info in store.walk()}


def test_reopened_store_sees_blobs(tmp_path: Path) -> None:
    digest = put(ContentStore(tmp_path), b"persisted")
    assert b"".join(ContentStore(tmp_path).read(digest)) == b"persisted"
