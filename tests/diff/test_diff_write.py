"""write_diff: the layer between two trees, applied on the lower, gives the upper."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from diff_helpers import OCI_GZIP, T0, Layer, apply_bytes, describe, set_times, sha256

from ctrpy.errors import NotImplemented
from ctrpy.manager.diff import diff_compression, write_diff


def base_layer() -> Layer:
    return (
        Layer()
        .dir("etc").file("etc/hosts", b"127.0.0.1 localhost\n").file("etc/motd", b"hello\n")
        .file("etc/shadow", b"secret", mode=0o600)
        .dir("usr").dir("usr/share").dir("usr/share/doc").file("usr/share/doc/a", b"a")
        .dir("usr/share/doc/sub").file("usr/share/doc/sub/b", b"b")
        .dir("was-dir").file("was-dir/inner", b"i")
        .file("was-file", b"f")
        .symlink("link", "etc/hosts")
        .file("lonely", b"one name")
        .file("pair1", b"two names").hardlink("pair2", "pair1")
        .file("xattr", b"x", xattrs={"user.a": b"1"})
        .dir("owner").file("owner/f", b"o", uid=1, gid=1)
    )


def cp(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    apply_bytes(base_layer().tar(), lower)
    cp(lower, upper)
    # every kind of change
    (upper / "etc/motd").write_bytes(b"HELLO\n")  # same size; times are reset below
    os.chmod(upper / "etc/shadow", 0o640)
    os.chown(upper / "owner/f", 2, 3)
    (upper / "etc/new").write_bytes(b"new file\n")
    os.unlink(upper / "etc/hosts")
    shutil.rmtree(upper / "usr/share/doc")
    shutil.rmtree(upper / "was-dir")
    (upper / "was-dir").write_bytes(b"now a file")
    os.unlink(upper / "was-file")
    (upper / "was-file").mkdir()
    (upper / "was-file/child").write_bytes(b"c")
    os.unlink(upper / "link")
    os.symlink("etc/new", upper / "link")
    os.link(upper / "lonely", upper / "lonely-too")  # an unchanged file gains a name
    os.setxattr(upper / "xattr", "user.a", b"2")
    os.mknod(upper / "etc/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mkfifo(upper / "fifo")
    (upper / "deep/er/still").mkdir(parents=True)
    (upper / "deep/er/still/file").write_bytes(b"deep")
    set_times(lower)
    set_times(upper)
    return lower, upper


def entry_names(blob: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r|") as tf:
        return [m.name + ("/" if m.isdir() else "") for m in tf]


def test_diff_applied_on_lower_gives_upper(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, upper = trees
    out = io.BytesIO()
    digest, size = write_diff(lower, upper, out)
    blob = out.getvalue()
    assert (digest, size) == (sha256(blob), len(blob))

    target = tmp_path / "target"
    target.mkdir()
    cp(lower, target)
    assert apply_bytes(blob, target).digest == digest
    set_times(target, T0)  # only the root's own time, which no layer carries, is reset here
    assert describe(target) == describe(upper)


def test_diff_entries_and_order(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    out = io.BytesIO()
    write_diff(lower, upper, out)
    names = entry_names(out.getvalue())
    assert names == [
        "deep/",
        "deep/er/",
        "deep/er/still/",
        "deep/er/still/file",
        "etc/",
        "etc/.wh.hosts",
        "etc/motd",
        "etc/new",
        "etc/null",
        "etc/shadow",
        "fifo",
        "link",
        "lonely-too",
        "lonely",  # the unchanged name, written as a link to the new one
        "owner/",
        "owner/f",
        "usr/",
        "usr/share/",
        "usr/share/.wh.doc",  # one whiteout for the whole directory
        "was-dir",
        "was-file/",
        "was-file/child",
        "xattr",
    ]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r|") as tf:
        members = {m.name: m for m in tf}
    assert members["lonely"].islnk() and members["lonely"].linkname == "lonely-too"
    assert members["etc/.wh.hosts"].mtime == 0 and members["etc/.wh.hosts"].size == 0
    assert members["xattr"].pax_headers["SCHILY.xattr.user.a"] == "2"
    assert members["owner/f"].uid == 2 and members["owner/f"].gid == 3
    assert members["owner/f"].uname == "" and members["owner/f"].gname == ""
    assert members["etc/null"].ischr() and (members["etc/null"].devmajor, members["etc/null"].devminor) == (1, 3)


def test_output_is_deterministic(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    first, second = io.BytesIO(), io.BytesIO()
    assert write_diff(lower, upper, first, "gzip") == write_diff(lower, upper, second, "gzip")
    assert first.getvalue() == second.getvalue()
    plain = io.BytesIO()
    digest, _ = write_diff(lower, upper, plain)
    assert gzip.decompress(first.getvalue()) == plain.getvalue()
    assert digest == sha256(plain.getvalue())


def test_gzip_diff_applies(trees: tuple[Path, Path], tmp_path: Path) -> None:
    lower, upper = trees
    out = io.BytesIO()
    digest, size = write_diff(lower, upper, out, "gzip")
    target = tmp_path / "target"
    target.mkdir()
    cp(lower, target)
    applied = apply_bytes(out.getvalue(), target, OCI_GZIP)
    assert (applied.digest, applied.size) == (digest, size)


def test_identical_trees_give_an_empty_layer(trees: tuple[Path, Path]) -> None:
    lower, _ = trees
    out = io.BytesIO()
    write_diff(lower, lower, out)
    assert entry_names(out.getvalue()) == []


def test_no_lower_means_everything_is_added(trees: tuple[Path, Path], tmp_path: Path) -> None:
    _, upper = trees
    out = io.BytesIO()
    write_diff(None, upper, out)
    target = tmp_path / "target"
    target.mkdir()
    apply_bytes(out.getvalue(), target)
    set_times(target, T0)
    assert describe(target) == describe(upper)


def test_content_change_with_equal_metadata_is_found(tmp_path: Path) -> None:
    lower, upper = tmp_path / "l", tmp_path / "u"
    for d, data in ((lower, b"aaaa"), (upper, b"bbbb")):
        d.mkdir()
        (d / "f").write_bytes(data)
        set_times(d)
    out = io.BytesIO()
    write_diff(lower, upper, out)
    assert entry_names(out.getvalue()) == ["f"]
    # but differing nanoseconds alone count as a change without reading the contents
    (upper / "f").write_bytes(b"aaaa")
    os.utime(upper / "f", ns=(T0 * 10**9 + 5, T0 * 10**9 + 5))
    out = io.BytesIO()
    write_diff(lower, upper, out)
    assert entry_names(out.getvalue()) == ["f"]


def test_unknown_compression(trees: tuple[Path, Path]) -> None:
    lower, upper = trees
    with pytest.raises(NotImplemented):
        write_diff(lower, upper, io.BytesIO(), "bzip2")  # type: ignore[arg-type]


def test_diff_compression_follows_the_media_type() -> None:
    assert diff_compression("") == "gzip"
    assert diff_compression("application/vnd.oci.image.layer.v1.tar+gzip") == "gzip"
    assert diff_compression("application/vnd.oci.image.layer.v1.tar") is None
    with pytest.raises(NotImplemented, match="unsupported diff media type"):
        diff_compression("application/vnd.oci.image.layer.v1.tar+zstd")
