"""Whiteouts and opaque directories, on a plain directory and on a real overlay."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from diff_helpers import Layer, apply_bytes, describe

from ctrpy.manager.diff import UnsafeEntry
from ctrpy.mount import Mount, mount, mountpoints_under, unmount


def base_layer() -> Layer:
    return (
        Layer()
        .dir("etc", mode=0o755)
        .file("etc/passwd", b"root:x:0:0\n")
        .file("etc/group", b"root:x:0\n")
        .dir("var").dir("var/log").file("var/log/a", b"a").file("var/log/b", b"b")
        .dir("opq", mode=0o775, uid=9).file("opq/old1", b"1").dir("opq/sub").file("opq/sub/old2")
        .dir("opq2").dir("opq2/sub").file("opq2/sub/old").file("opq2/gone")
        .dir("srv", mode=0o750, uid=33, gid=34, xattrs={"user.tag": b"srv"}).file("srv/x")
        .dir("keep").file("keep/x", b"x")
        .file("hard1", b"h").hardlink("hard2", "hard1")
    )


def change_layer() -> Layer:
    return (
        Layer()
        .whiteout("etc/group")
        .whiteout("var/log")
        .whiteout("no-such-file")
        .file("opq/new", b"before the marker")
        .opaque("opq")
        .file("opq/sub/new2", b"after the marker")
        .file("opq2/sub/new", b"nested, before the marker")
        .opaque("opq2")
        .file("srv/added", b"parent not in this layer")
        .file(".wh..wh.plnk", b"")  # a whiteout meta entry: ignored
        .whiteout("hard2")
    )


def names(root: Path) -> set[str]:
    return {k for k in describe(root) if k != "<links>"}


def test_plain_whiteouts_and_opaque_dirs(root: Path) -> None:
    apply_bytes(base_layer().tar(), root)
    apply_bytes(change_layer().tar(), root)
    assert names(root) == {
        "etc", "etc/passwd", "var",
        "opq", "opq/new", "opq/sub", "opq/sub/new2",
        "opq2", "opq2/sub", "opq2/sub/new",
        "srv", "srv/x", "srv/added",
        "keep", "keep/x", "hard1",
    }
    assert (root / "opq/new").read_bytes() == b"before the marker"
    st = os.lstat(root / "opq")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o775, 9)  # the opaque dir itself stays


def test_whiteout_names_are_checked(root: Path) -> None:
    with pytest.raises(UnsafeEntry, match="invalid whiteout name"):
        apply_bytes(Layer().file("dir/.wh.").tar(), root)


@pytest.fixture
def overlay_dirs(tmp_path: Path) -> dict[str, Path]:
    dirs = {n: tmp_path / n for n in ("lower", "upper", "work", "merged", "plain")}
    for d in dirs.values():
        d.mkdir()
    return dirs


def test_overlay_upper_matches_a_plain_apply(overlay_dirs: dict[str, Path]) -> None:
    lower, upper = overlay_dirs["lower"], overlay_dirs["upper"]
    apply_bytes(base_layer().tar(), lower)
    subprocess.run(["cp", "-a", f"{lower}/.", str(overlay_dirs["plain"])], check=True)

    apply_bytes(change_layer().tar(), upper, overlay_upper=True, parents=[lower])

    # the upper directory holds overlayfs' own whiteouts
    for gone in ("etc/group", "var/log", "hard2", "no-such-file"):
        st = os.lstat(upper / gone)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0), gone
    assert os.getxattr(upper / "opq", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(upper / "opq2", "trusted.overlay.opaque") == b"y"
    assert not (upper / ".wh..wh.plnk").exists()
    # a parent created in the upper takes its metadata from the lower
    lower_srv, upper_srv = os.lstat(lower / "srv"), os.lstat(upper / "srv")
    assert (upper_srv.st_mode, upper_srv.st_uid, upper_srv.st_gid) == (
        lower_srv.st_mode, lower_srv.st_uid, lower_srv.st_gid)
    assert os.getxattr(upper / "srv", "user.tag") == b"srv"

    # and the merged view is what a plain apply gives
    plain = overlay_dirs["plain"]
    apply_bytes(change_layer().tar(), plain)
    merged = overlay_dirs["merged"]
    options = (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={overlay_dirs['work']}")
    mount(Mount("overlay", "overlay", "", options), str(merged))
    try:
        assert describe(merged, dir_mtimes=False) == describe(plain, dir_mtimes=False)
    finally:
        unmount(merged)
    assert mountpoints_under(merged) == []
