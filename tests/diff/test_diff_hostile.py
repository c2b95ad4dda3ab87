"""Hostile layers: nothing may land outside the target, whatever the entries say.

Each case checks the sentinel (a directory beside the target with a secret file, and the
list of tmp_path's entries) after the apply, whether the apply failed or contained the entry.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import pytest
from diff_helpers import Layer, Sentinel, apply_bytes

from ctrpy.errors import InvalidArgument
from ctrpy.manager.diff import UnsafeEntry


@pytest.mark.parametrize("overlay_upper", [False, True])
@pytest.mark.parametrize(
    "name",
    ["../evil", "a/../../evil", "../outside/secret", "./../evil", "a/b/../../../evil"],
)
def test_dotdot_that_climbs_out_is_refused(
    root: Path, sentinel: Sentinel, name: str, overlay_upper: bool
) -> None:
    with pytest.raises(UnsafeEntry, match="climbs above the root"):
        apply_bytes(Layer().file(name, b"pwned").tar(), root, overlay_upper=overlay_upper)
    sentinel.check()


def test_dotdot_that_stays_inside_is_fine(root: Path, sentinel: Sentinel) -> None:
    apply_bytes(Layer().file("a/../b", b"ok").tar(), root)
    assert (root / "b").read_bytes() == b"ok"
    sentinel.check()


def test_absolute_names_are_contained(root: Path, sentinel: Sentinel) -> None:
    secret = str(sentinel.secret)
    apply_bytes(Layer().file("/abs/file", b"in").file(secret, b"pwned").tar(), root)
    assert (root / "abs/file").read_bytes() == b"in"
    assert (root / secret.lstrip("/")).read_bytes() == b"pwned"
    sentinel.check()


def test_symlink_to_host_root_then_file_under_it(root: Path, sentinel: Sentinel) -> None:
    unique = f"ctrpy-escape-{secrets.token_hex(8)}"
    layer = Layer().symlink("a", "/").file(f"a/{unique}", b"pwned")
    try:
        apply_bytes(layer.tar(), root)
        assert not os.path.lexists(f"/{unique}")
        assert (root / unique).read_bytes() == b"pwned"
    finally:
        if os.path.lexists(f"/{unique}"):  # only if the test fails
            os.unlink(f"/{unique}")
    sentinel.check()


def test_relative_symlink_that_climbs_then_file_under_it(root: Path, sentinel: Sentinel) -> None:
    layer = Layer().symlink("a", "../../..").file("a/x", b"pwned").symlink("b", "../outside")
    layer.file("b/secret", b"pwned")
    apply_bytes(layer.tar(), root)
    assert (root / "x").read_bytes() == b"pwned"
    assert (root / "outside/secret").read_bytes() == b"pwned"
    sentinel.check()


def test_symlink_to_outside_dir_then_file_under_it(root: Path, sentinel: Sentinel) -> None:
    outside = str(sentinel.outside)
    layer = Layer().symlink("a", outside).file("a/secret", b"pwned").dir("a/newdir")
    apply_bytes(layer.tar(), root)
    inside = root / outside.lstrip("/")
    assert (inside / "secret").read_bytes() == b"pwned"
    assert (inside / "newdir").is_dir()
    sentinel.check()


def test_symlink_chain_resolves_inside(root: Path, sentinel: Sentinel) -> None:
    layer = (
        Layer()
        .dir("real")
        .symlink("s1", "/s2")
        .symlink("s2", "real/../../../s3")
        .symlink("s3", "real")
        .file("s1/f", b"through three links")
    )
    apply_bytes(layer.tar(), root)
    assert (root / "real/f").read_bytes() == b"through three links"
    sentinel.check()


def test_symlink_loop_is_refused(root: Path, sentinel: Sentinel) -> None:
    layer = Layer().symlink("l1", "l2").symlink("l2", "/l1").file("l1/x")
    with pytest.raises(UnsafeEntry, match="too many levels of symbolic links"):
        apply_bytes(layer.tar(), root)
    sentinel.check()


def test_file_over_a_symlink_replaces_the_symlink(root: Path, sentinel: Sentinel) -> None:
    layer = Layer().symlink("s", str(sentinel.secret)).file("s", b"pwned", mode=0o600)
    apply_bytes(layer.tar(), root)
    assert not (root / "s").is_symlink()
    assert (root / "s").read_bytes() == b"pwned"
    sentinel.check()


def test_metadata_is_never_set_through_a_symlink(root: Path, sentinel: Sentinel) -> None:
    # a directory entry, then the same name as a symlink to the outside: the deferred
    # directory times must not reach the outside directory
    layer = Layer().dir("d", mtime=1).symlink("d", str(sentinel.outside)).dir("d2", mtime=1)
    layer.symlink("d2", str(sentinel.outside))
    apply_bytes(layer.tar(), root)
    assert os.readlink(root / "d") == str(sentinel.outside)
    sentinel.check()


@pytest.mark.parametrize(
    "linkname", ["../outside/secret", "../../evil", "a/../../outside/secret"]
)
def test_hardlink_climbing_out_is_refused(root: Path, sentinel: Sentinel, linkname: str) -> None:
    with pytest.raises(UnsafeEntry, match="climbs above the root"):
        apply_bytes(Layer().hardlink("h", linkname).tar(), root)
    sentinel.check()


def test_hardlink_to_absolute_outside_path_is_contained(root: Path, sentinel: Sentinel) -> None:
    with pytest.raises(InvalidArgument, match=r"hard link target .* not found"):
        apply_bytes(Layer().hardlink("h", str(sentinel.secret)).tar(), root)
    assert not os.path.lexists(root / "h")
    sentinel.check()


def test_hardlink_through_a_symlinked_parent(root: Path, sentinel: Sentinel) -> None:
    layer = Layer().symlink("esc", str(sentinel.outside)).hardlink("h", "esc/secret")
    with pytest.raises(InvalidArgument, match="not found"):
        apply_bytes(layer.tar(), root)
    layer = Layer().symlink("up", "/").hardlink("h2", "up/etc/passwd")
    with pytest.raises(InvalidArgument, match="not found"):
        apply_bytes(layer.tar(), root)
    sentinel.check()


def test_hardlink_to_a_symlink_links_the_symlink(root: Path, sentinel: Sentinel) -> None:
    layer = Layer().symlink("s", str(sentinel.secret)).hardlink("h", "s")
    apply_bytes(layer.tar(), root)
    st_s, st_h = os.lstat(root / "s"), os.lstat(root / "h")
    assert stat.S_ISLNK(st_h.st_mode) and st_h.st_ino == st_s.st_ino
    sentinel.check()


def test_hardlink_to_a_directory_is_invalid(root: Path, sentinel: Sentinel) -> None:
    with pytest.raises(InvalidArgument, match="cannot hard link"):
        apply_bytes(Layer().dir("d").hardlink("h", "d").tar(), root)
    sentinel.check()


def test_whiteouts_through_symlinks_stay_inside(root: Path, sentinel: Sentinel) -> None:
    layer = (
        Layer()
        .symlink("a", str(sentinel.outside))
        .whiteout("a/secret")
        .opaque("a")
        .symlink("b", "../outside")
        .whiteout("b/secret")
        .opaque("b")
    )
    apply_bytes(layer.tar(), root)
    sentinel.check()
    with pytest.raises(UnsafeEntry):
        apply_bytes(Layer().whiteout("../outside/secret").tar(), root)
    with pytest.raises(UnsafeEntry):
        apply_bytes(Layer().file("d/.wh..").tar(), root)
    sentinel.check()


def test_overlay_whiteouts_through_symlinks_stay_inside(root: Path, sentinel: Sentinel) -> None:
    layer = Layer().symlink("a", str(sentinel.outside)).whiteout("a/secret").opaque("a")
    apply_bytes(layer.tar(), root, overlay_upper=True)
    inside = root / str(sentinel.outside).lstrip("/")
    assert stat.S_ISCHR(os.lstat(inside / "secret").st_mode)
    assert os.getxattr(inside, "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(sentinel.outside)
    sentinel.check()


def test_nul_in_names_is_refused(root: Path, sentinel: Sentinel) -> None:
    layer = Layer().file("ok")
    layer.members[0][0].pax_headers = {"path": "a\x00b"}
    with pytest.raises(UnsafeEntry, match="NUL"):
        apply_bytes(layer.tar(), root)
    sentinel.check()


def test_the_root_entry_is_ignored(root: Path, sentinel: Sentinel) -> None:
    os.chmod(root, 0o755)
    apply_bytes(Layer().dir("./", mode=0o777, uid=5).dir("/", mode=0o700).tar(), root)
    st = os.lstat(root)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
    sentinel.check()
