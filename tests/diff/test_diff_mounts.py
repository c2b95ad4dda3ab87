"""apply_to_mounts and diff_mounts on real bind and overlay mounts; nothing stays mounted."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest
from diff_helpers import OCI_TAR, Layer, apply_bytes, describe, sha256

from ctrpy.manager.diff import UnsafeEntry, apply_to_mounts, diff_mounts
from ctrpy.manager.diff.mounts import readonly_mounts
from ctrpy.mount import Mount, mount, mountpoints_under, unmount


def dirs(tmp_path: Path, *names: str) -> list[Path]:
    made = []
    for name in names:
        (tmp_path / name).mkdir()
        made.append(tmp_path / name)
    return made


def overlay(lower: Path | str, upper: Path, work: Path) -> Mount:
    return Mount("overlay", "overlay", "", (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"))


def apply_mounts(blob: bytes, mounts: list[Mount], tmp_root: Path) -> str:
    return apply_to_mounts(io.BytesIO(blob), OCI_TAR, mounts, tmp_root=tmp_root).digest


def assert_nothing_left(tmp_path: Path, tmp_root: Path) -> None:
    assert mountpoints_under(tmp_path) == []
    assert list(tmp_root.iterdir()) == []


def test_bind_mount_is_applied_in_place(tmp_path: Path) -> None:
    src, mnt = dirs(tmp_path, "src", "mnt")
    blob = Layer().file("a/b", b"in place").tar()
    assert apply_mounts(blob, [Mount("bind", str(src), "", ("rbind", "rw"))], mnt) == sha256(blob)
    assert (src / "a/b").read_bytes() == b"in place"
    assert_nothing_left(tmp_path, mnt)


def test_overlay_is_applied_into_its_upper_dir(tmp_path: Path) -> None:
    lower, upper, work, mnt = dirs(tmp_path, "lower", "upper", "work", "mnt")
    apply_bytes(Layer().dir("etc", mode=0o700, uid=4).file("etc/old").file("etc/kept").tar(), lower)
    blob = Layer().whiteout("etc/old").file("etc/new", b"n").tar()
    apply_mounts(blob, [overlay(lower, upper, work)], mnt)
    assert stat.S_ISCHR(os.lstat(upper / "etc/old").st_mode)
    assert (upper / "etc/new").read_bytes() == b"n"
    st = os.lstat(upper / "etc")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 4)  # from the lower dir
    assert sorted(os.listdir(lower / "etc")) == ["kept", "old"]
    assert_nothing_left(tmp_path, mnt)


def test_other_mounts_are_mounted_applied_and_unmounted(tmp_path: Path) -> None:
    top, sub, mnt = dirs(tmp_path, "top", "sub", "mnt")
    (top / "sub").mkdir()
    mounts = [
        Mount("bind", str(top), "", ("rbind", "rw")),
        Mount("bind", str(sub), "sub", ("rbind", "rw")),
    ]
    blob = Layer().file("x", b"top").file("sub/y", b"submount").tar()
    apply_mounts(blob, mounts, mnt)
    assert (top / "x").read_bytes() == b"top"
    assert (sub / "y").read_bytes() == b"submount"
    assert not (top / "sub/y").exists()
    assert_nothing_left(tmp_path, mnt)


def test_mounts_are_undone_when_the_apply_fails(tmp_path: Path) -> None:
    top, sub, mnt = dirs(tmp_path, "top", "sub", "mnt")
    (top / "sub").mkdir()
    mounts = [Mount("bind", str(top), "", ("rbind",)), Mount("bind", str(sub), "sub", ("rbind",))]
    with pytest.raises(UnsafeEntry):
        apply_mounts(Layer().file("../../evil").tar(), mounts, mnt)
    assert_nothing_left(tmp_path, mnt)
    with pytest.raises(OSError):
        apply_mounts(Layer().tar(), [Mount("overlay", "overlay", "", ("lowerdir=/nonexistent",)),
                                     Mount("bind", str(sub), "sub", ())], mnt)
    assert_nothing_left(tmp_path, mnt)


def test_readonly_mounts() -> None:
    got = readonly_mounts([
        Mount("overlay", "overlay", "", ("index=off", "lowerdir=/l2:/l1", "upperdir=/u", "workdir=/w")),
        Mount("overlay", "overlay", "", ("lowerdir=/l1", "upperdir=/u", "workdir=/w")),
        Mount("overlay", "overlay", "", ("lowerdir=/only",)),
        Mount("bind", "/src", "", ("rbind", "rw")),
    ])
    assert got == [
        Mount("overlay", "overlay", "", ("lowerdir=/u:/l2:/l1",)),
        Mount("overlay", "overlay", "", ("lowerdir=/u:/l1",)),
        Mount("bind", "/only", "", ("rbind", "ro")),
        Mount("bind", "/src", "", ("rbind", "ro")),
    ]


def test_diff_mounts_of_an_overlay_snapshot(tmp_path: Path) -> None:
    lower, upper, work, merged, target, mnt = dirs(
        tmp_path, "lower", "upper", "work", "merged", "target", "mnt")
    apply_bytes(Layer().dir("etc").file("etc/a", b"a").file("etc/b", b"b").dir("opq")
                .file("opq/old").tar(), lower)
    snapshot = overlay(lower, upper, work)
    # the snapshot is in use, as a container's rootfs would be, and changed through it
    mount(snapshot, str(merged))
    try:
        os.unlink(merged / "etc/a")
        (merged / "etc/c").write_bytes(b"c")
        (merged / "new").mkdir()
        expected = describe(merged, mtimes=False)
        mtime_c = os.lstat(merged / "etc/c").st_mtime_ns
        out = io.BytesIO()
        digest, size = diff_mounts(
            [Mount("bind", str(lower), "", ("rbind", "ro"))], [snapshot], out, tmp_root=mnt)
        assert mountpoints_under(mnt) == []
    finally:
        unmount(merged)
    assert (digest, size) == (sha256(out.getvalue()), len(out.getvalue()))
    subprocess.run(["cp", "-a", f"{lower}/.", str(target)], check=True)
    apply_bytes(out.getvalue(), target)
    assert describe(target, mtimes=False) == expected
    # layers keep whole seconds of mtimes
    assert os.lstat(target / "etc/c").st_mtime_ns == mtime_c // 10**9 * 10**9
    assert_nothing_left(tmp_path, mnt)


def test_diff_mounts_with_overlay_lowers(tmp_path: Path) -> None:
    l1, l2, out_dir, mnt = dirs(tmp_path, "l1", "l2", "target", "mnt")
    apply_bytes(Layer().file("one", b"1").file("two", b"2").tar(), l1)
    apply_bytes(Layer().whiteout("one").file("three", b"3").tar(), l2, overlay_upper=True)
    lower = [Mount("overlay", "overlay", "", (f"lowerdir={l1}",))]  # becomes a bind: one dir
    upper = [Mount("overlay", "overlay", "", (f"lowerdir={l2}:{l1}",))]
    out = io.BytesIO()
    diff_mounts(lower, upper, out, "gzip", tmp_root=mnt)
    assert_nothing_left(tmp_path, mnt)
    subprocess.run(["cp", "-a", f"{l1}/.", str(out_dir)], check=True)
    apply_bytes(out.getvalue(), out_dir, "application/vnd.oci.image.layer.v1.tar+gzip")
    assert sorted(os.listdir(out_dir)) == ["three", "two"]
    # no lower mounts: everything is an addition
    out = io.BytesIO()
    diff_mounts([], upper, out, tmp_root=mnt)
    assert_nothing_left(tmp_path, mnt)
