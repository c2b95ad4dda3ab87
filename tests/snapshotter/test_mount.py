"""ctrpy.mount: option parsing, and real mounts made and undone."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ctrpy import mount as m
from ctrpy.mount import Mount, mount_all, mounted, mountpoints_under, unmount_all


@pytest.fixture
def cleanup_mounts(tmp_path: Path):  # type: ignore[no-untyped-def]
    yield
    for point in mountpoints_under(tmp_path):
        unmount_all(point, detach=True)


def test_parse_options() -> None:
    parsed = m.parse_options(["ro", "rbind", "nosuid", "rprivate", "lowerdir=/a", "rw", "index=off"])
    assert parsed.flags == m.MS_BIND | m.MS_REC | m.MS_NOSUID
    assert parsed.propagation == m.MS_PRIVATE | m.MS_REC
    assert parsed.data == ("lowerdir=/a", "index=off")


def test_compact_lowerdirs() -> None:
    chdir, data = m._compact_lowerdirs(
        ["workdir=/r/snapshots/9/work", "lowerdir=/r/snapshots/12/fs:/r/snapshots/13/fs", "index=off"]
    )
    assert chdir == "/r/snapshots"
    assert data == ("workdir=/r/snapshots/9/work", "index=off", "lowerdir=12/fs:13/fs")
    assert m._compact_lowerdirs(["lowerdir=/a/x"]) == ("", ("lowerdir=/a/x",))
    assert m._compact_lowerdirs(["lowerdir=/a/x:/b/y"]) == ("", ("lowerdir=/a/x:/b/y",))


def test_bind_read_only_and_read_write(tmp_path: Path, cleanup_mounts: None) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    with mounted([Mount("bind", str(src), options=("ro", "rbind"))], ro):
        assert (ro / "f").read_text() == "x"
        with pytest.raises(OSError) as caught:
            (ro / "g").write_text("y")
        assert caught.value.errno == errno.EROFS
    with mounted([Mount("bind", str(src), options=("rw", "rbind", "rprivate"))], rw):
        (rw / "g").write_text("y")
    assert (src / "g").read_text() == "y"
    assert not os.path.ismount(ro) and not os.path.ismount(rw)


def test_mount_all_is_all_or_nothing(tmp_path: Path, cleanup_mounts: None) -> None:
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    (target / "sub").mkdir(parents=True)
    good = Mount("bind", str(src), options=("rbind",))
    bad = Mount("overlay", "overlay", target="sub", options=(f"lowerdir={tmp_path}/missing",))
    with pytest.raises(OSError):
        mount_all([good, bad], target)
    assert mountpoints_under(tmp_path) == []


def test_mount_at_relative_target_and_paths_with_spaces(tmp_path: Path, cleanup_mounts: None) -> None:
    src, target = tmp_path / "a src", tmp_path / "a target"
    src.mkdir()
    (target / "in side").mkdir(parents=True)
    mount_all([Mount("bind", str(src), target="in side", options=("rbind",))], target)
    assert mountpoints_under(target) == [str(target / "in side")]
    unmount_all(target / "in side")
    assert mountpoints_under(target) == []


def test_unmount_all_of_plain_or_missing_directory(tmp_path: Path) -> None:
    unmount_all(tmp_path)
    unmount_all(tmp_path / "missing")


def test_options_longer_than_a_page_without_common_parent(tmp_path: Path) -> None:
    lowers = ":".join(f"/nonexistent-{i}-" + "x" * 40 for i in range(200))
    with pytest.raises(OSError) as caught:
        m.mount(Mount("overlay", "overlay", options=(f"lowerdir={lowers}",)), str(tmp_path))
    assert caught.value.errno == errno.E2BIG
