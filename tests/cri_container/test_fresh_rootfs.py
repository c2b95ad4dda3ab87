"""CreateContainer reads a freshly prepared root filesystem where it lies when it is one
directory (a lone lower layer under an empty upper, or a bind mount), and mounts it otherwise."""

from __future__ import annotations

from pathlib import Path

from ctrpy.manager.cri.containers import _fresh_rootfs_dir
from ctrpy.mount import Mount


def _overlay(tmp_path: Path, *extra: str, lowers: int = 1) -> tuple[Mount, Path]:
    layers = [tmp_path / f"l{n}" for n in range(lowers)]
    upper, work = tmp_path / "upper", tmp_path / "work"
    for d in (*layers, upper, work):
        d.mkdir(exist_ok=True)
    options = (*extra, f"workdir={work}", f"upperdir={upper}", "lowerdir=" + ":".join(map(str, layers)))
    return Mount(type="overlay", source="overlay", options=options), upper


def test_one_lower_under_an_empty_upper_is_read_in_place(tmp_path: Path) -> None:
    mount, _ = _overlay(tmp_path, "index=off")
    assert _fresh_rootfs_dir([mount]) == str(tmp_path / "l0")


def test_a_bind_mount_is_read_in_place(tmp_path: Path) -> None:
    assert _fresh_rootfs_dir([Mount(type="bind", source=str(tmp_path), options=("rw", "rbind"))]) == str(tmp_path)


def test_anything_else_is_mounted(tmp_path: Path) -> None:
    for name in ("several", "mapped", "written"):
        (tmp_path / name).mkdir()
    several, _ = _overlay(tmp_path / "several", lowers=2)
    assert _fresh_rootfs_dir([several]) is None
    mapped, _ = _overlay(tmp_path / "mapped", "uidmap=0:1000:65536")
    assert _fresh_rootfs_dir([mapped]) is None
    written, upper = _overlay(tmp_path / "written")
    (upper / "file").write_text("x")
    assert _fresh_rootfs_dir([written]) is None
    assert _fresh_rootfs_dir([]) is None
