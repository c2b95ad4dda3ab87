"""apply_layer: what a layer says ends up on disk exactly, and the diff id is right."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from diff_helpers import OCI_GZIP, OCI_TAR, T0, Layer, apply_bytes, describe, set_times, sha256

from ctrpy.errors import InvalidArgument, NotImplemented
from ctrpy.manager.diff import (
    CorruptLayer,
    LayerTooLarge,
    Limits,
    write_diff,
    zstd_available,
)

LONG = "deep/" + "d" * 120 + "/file-with-a-long-name-" + "n" * 80


def rich_layer() -> Layer:
    """One of each kind of entry, with owners, odd modes, xattrs and times."""
    return (
        Layer()
        .dir("bin", mode=0o755)
        .file("bin/su", b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0, mtime=T0 + 1)
        .file("bin/sg", b"sg\n", mode=0o2711, uid=3, gid=4)
        .dir("tmp", mode=0o1777, mtime=T0 + 2)
        .dir("home", mode=0o750, uid=1000, gid=1000, mtime=T0 + 3)
        .file("home/notes", b"hello\n", mode=0o600, uid=1000, gid=1000, mtime=T0 + 4,
              xattrs={"user.colour": b"blue", "user.raw": b"\x00\xff\xfe"})
        .file("home/empty", b"", mode=0o640, uid=2_000_000_000, gid=3_000_000)
        .symlink("home/link", "notes", uid=1000, gid=1000, mtime=T0 + 5)
        .symlink("abs-link", "/etc/passwd", mtime=T0 + 6)
        .file("data/a", b"shared inode\n", mode=0o644, uid=7, gid=8, mtime=T0 + 7)
        .hardlink("data/b", "data/a", mode=0o644, uid=7, gid=8, mtime=T0 + 7)
        .hardlink("data/c", "/data/a", mode=0o644, uid=7, gid=8, mtime=T0 + 7)
        .dir("dev", mode=0o755)
        .chardev("dev/null", 1, 3, mode=0o666)
        .blockdev("dev/loop9", 7, 9, mode=0o660, gid=6)
        .fifo("dev/fifo", mode=0o620)
        .file(LONG, b"long\n")
        .file("naïve-ünïcode", b"u\n")
        .dir("data", mode=0o711, mtime=T0 + 9)  # a directory again: metadata merges
    )


def test_round_trip_preserves_every_attribute(root: Path) -> None:
    layer = rich_layer()
    blob = layer.tar()
    applied = apply_bytes(blob, root)
    assert applied.digest == sha256(blob)
    assert applied.size == len(blob)
    tree = describe(root)

    def at(path: str) -> tuple[object, ...]:
        return tree[path]

    assert at("bin/su")[:4] == (stat.S_IFREG, 0o4755, 0, 0)
    assert at("bin/sg")[:4] == (stat.S_IFREG, 0o2711, 3, 4)
    assert at("tmp")[:2] == (stat.S_IFDIR, 0o1777)
    assert at("home")[:4] == (stat.S_IFDIR, 0o750, 1000, 1000)
    assert at("home/notes")[5] == {"user.colour": b"blue", "user.raw": b"\x00\xff\xfe"}
    assert at("home/empty")[2:4] == (2_000_000_000, 3_000_000)
    assert at("home/link")[:5] == (stat.S_IFLNK, 0o777, 1000, 1000, "notes")
    assert at("abs-link")[4] == "/etc/passwd"
    assert at("dev/null")[:5] == (stat.S_IFCHR, 0o666, 0, 0, (1, 3))
    assert at("dev/loop9")[:5] == (stat.S_IFBLK, 0o660, 0, 6, (7, 9))
    assert at("dev/fifo")[:2] == (stat.S_IFIFO, 0o620)
    assert at(LONG)[0] == stat.S_IFREG
    assert "naïve-ünïcode" in tree
    assert tree["<links>"] == (("data/a", "data/b", "data/c"),)
    # mtimes: files as given, directories set after their children were written
    assert at("bin/su")[6] == (T0 + 1) * 10**9
    assert at("home/link")[6] == (T0 + 5) * 10**9
    assert at("home")[6] == (T0 + 3) * 10**9
    assert at("tmp")[6] == (T0 + 2) * 10**9
    assert at("data")[:2] == (stat.S_IFDIR, 0o711)
    assert at("data")[6] == (T0 + 9) * 10**9
    # parents missing from the layer are created 0755
    assert at("deep")[:2] == (stat.S_IFDIR, 0o755)


def test_gzip_and_plain_give_the_same_diff_id(tmp_path: Path) -> None:
    blob = rich_layer().tar()
    plain = apply_bytes(blob, _fresh(tmp_path, "plain"), OCI_TAR)
    zipped = apply_bytes(gzip.compress(blob), _fresh(tmp_path, "gz"), OCI_GZIP)
    docker = apply_bytes(
        gzip.compress(blob), _fresh(tmp_path, "docker"),
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    )
    assert plain == zipped == docker
    assert plain.digest == sha256(blob)
    trees = [describe(tmp_path / n, dir_mtimes=False) for n in ("plain", "gz", "docker")]
    assert trees[0] == trees[1] == trees[2]


def test_digest_covers_trailing_padding_and_data(root: Path) -> None:
    blob = Layer().file("a", b"a").tar() + b"\0" * 20_000 + b"trailing bytes"
    applied = apply_bytes(gzip.compress(blob), root, OCI_GZIP)
    assert applied == type(applied)(sha256(blob), len(blob))


def test_multi_member_gzip(root: Path) -> None:
    blob = Layer().file("a", b"a" * 5000).tar()
    split = gzip.compress(blob[:3000]) + gzip.compress(blob[3000:])
    assert apply_bytes(split, root, OCI_GZIP).digest == sha256(blob)
    assert (root / "a").read_bytes() == b"a" * 5000


def test_empty_stream_is_an_empty_layer(root: Path) -> None:
    assert apply_bytes(b"", root).digest == sha256(b"")
    assert list(root.iterdir()) == []


def test_unknown_media_type_is_not_implemented(root: Path) -> None:
    with pytest.raises(NotImplemented, match="unsupported layer media type"):
        apply_bytes(Layer().file("a").tar(), root, "application/vnd.example.layer")


def test_zstd(root: Path, tmp_path: Path) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("no zstd binary to make a zstd stream")
    blob = Layer().file("z", b"zstd data\n").tar()
    zstd = subprocess.run(["zstd", "-q", "-c"], input=blob, capture_output=True, check=True).stdout
    media = "application/vnd.oci.image.layer.v1.tar+zstd"
    if not zstd_available():
        with pytest.raises(NotImplemented, match="zstandard"):
            apply_bytes(zstd, root, media)
        return
    assert apply_bytes(zstd, root, media).digest == sha256(blob)
    assert (root / "z").read_bytes() == b"zstd data\n"


def test_replacing_entries_of_another_type(root: Path) -> None:
    (root / "was-dir").mkdir()
    (root / "was-dir" / "child").write_text("x")
    (root / "was-file").write_text("x")
    os.symlink("/nowhere", root / "was-link")
    (root / "merge").mkdir()
    (root / "merge" / "old").write_text("kept")
    (root / "was-fifo-now-file").touch()
    layer = (
        Layer()
        .file("was-dir", b"now a file\n")
        .dir("was-file", mode=0o700)
        .file("was-file/inside", b"in\n")
        .dir("was-link")
        .dir("merge", mode=0o711, uid=5)
        .file("merge/new", b"new\n")
        .fifo("was-fifo-now-file")
        .file("was-fifo-now-file", b"file again\n")
    )
    apply_bytes(layer.tar(), root)
    assert (root / "was-dir").read_bytes() == b"now a file\n"
    assert (root / "was-file").is_dir() and (root / "was-file" / "inside").exists()
    assert stat.S_IMODE(os.lstat(root / "was-file").st_mode) == 0o700
    assert not (root / "was-link").is_symlink() and (root / "was-link").is_dir()
    assert sorted(p.name for p in (root / "merge").iterdir()) == ["new", "old"]
    st = os.lstat(root / "merge")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o711, 5)
    assert (root / "was-fifo-now-file").read_bytes() == b"file again\n"


def test_sparse_file_keeps_its_holes(root: Path, tmp_path: Path) -> None:
    source = tmp_path / "sparse"
    with open(source, "wb") as f:
        f.seek(50 << 20)
        f.write(b"end")
    blob = subprocess.run(
        ["tar", "--sparse", "--format=pax", "-C", str(tmp_path), "-cf", "-", "sparse"],
        capture_output=True, check=True,
    ).stdout
    assert len(blob) < 1 << 20
    apply_bytes(blob, root)
    st = os.stat(root / "sparse")
    assert st.st_size == (50 << 20) + 3
    assert st.st_blocks * 512 < 1 << 20
    with open(root / "sparse", "rb") as f:
        f.seek(50 << 20)
        assert f.read() == b"end"


def test_gnu_tar_layer_round_trip(tmp_path: Path) -> None:
    """A layer written by another tool (GNU tar) reproduces the tree it was made from."""
    ref = tmp_path / "ref"
    ref.mkdir()
    apply_bytes(rich_layer().tar(), ref)
    blob = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=user.*", "--numeric-owner", "--format=pax",
         "-C", str(ref), "-cf", "-", "."],
        capture_output=True, check=True,
    ).stdout
    out = _fresh(tmp_path, "out")
    apply_bytes(blob, out)
    os.utime(ref, ns=(T0 * 10**9, T0 * 10**9))
    os.utime(out, ns=(T0 * 10**9, T0 * 10**9))
    assert describe(out) == describe(ref)


def test_own_writer_round_trip(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    apply_bytes(rich_layer().tar(), ref)
    set_times(ref)
    buf = io.BytesIO()
    digest, size = write_diff(None, ref, buf)
    assert (digest, size) == (sha256(buf.getvalue()), len(buf.getvalue()))
    out = _fresh(tmp_path, "out")
    assert apply_bytes(buf.getvalue(), out).digest == digest
    set_times(out)  # the root's own time is not in a layer
    assert describe(out) == describe(ref)


def test_limits(tmp_path: Path) -> None:
    bomb = Layer().file("bomb", b"\0" * (8 << 20)).gzip()
    assert len(bomb) < 64 << 10
    with pytest.raises(LayerTooLarge, match="layer exceeds 1048576 uncompressed bytes"):
        apply_bytes(bomb, _fresh(tmp_path, "a"), OCI_GZIP,
                    limits=Limits(max_uncompressed_bytes=1 << 20))
    many = Layer()
    for i in range(20):
        many.file(f"f{i}")
    with pytest.raises(LayerTooLarge, match="layer exceeds 10 entries"):
        apply_bytes(many.tar(), _fresh(tmp_path, "b"), limits=Limits(max_entries=10))
    blob = many.tar()
    ok = apply_bytes(blob, _fresh(tmp_path, "c"),
                     limits=Limits(max_uncompressed_bytes=len(blob), max_entries=20))
    assert ok.size == len(blob)
    assert issubclass(LayerTooLarge, InvalidArgument)


def test_corrupt_archives_are_invalid(tmp_path: Path) -> None:
    good = Layer().file("a", b"a" * 700).file("b", b"b").tar()
    # a broken header after the first entry (not the quiet end tarfile would make of it)
    broken = bytearray(good)
    assert broken[1536:1538] == b"b\0"  # the second header
    broken[1536 + 100 : 1536 + 108] = b"garbage!"  # its mode field
    with pytest.raises(CorruptLayer):
        apply_bytes(bytes(broken), _fresh(tmp_path, "a"))
    with pytest.raises(InvalidArgument, match="corrupt"):
        apply_bytes(gzip.compress(good)[:-30], _fresh(tmp_path, "b"), OCI_GZIP)
    with pytest.raises(CorruptLayer, match="unexpected end of data"):
        apply_bytes(good[:1000], _fresh(tmp_path, "c"))
    with pytest.raises(CorruptLayer):
        apply_bytes(b"this is not a tar archive at all" * 40, _fresh(tmp_path, "d"))


def test_unsupported_entry_type(root: Path) -> None:
    info = tarfile.TarInfo("vol")
    info.type = b"V"  # a GNU volume header
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(info)
    with pytest.raises(CorruptLayer, match="unsupported entry type"):
        apply_bytes(buf.getvalue(), root)


def test_trusted_xattrs_are_not_applied(root: Path) -> None:
    layer = Layer().dir("d", xattrs={"trusted.overlay.opaque": b"y", "user.ok": b"1"})
    apply_bytes(layer.tar(), root)
    assert os.listxattr(root / "d") == ["user.ok"]


def _fresh(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path
