"""Users and groups read from an image's root filesystem (containerd's WithUser and
WithAdditionalGIDs rules), on real directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.oci.users import Identity, additional_gids, identity, resolve_user, root_path

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:app:/home/app:/bin/sh

nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
wheel:x:10:root,app
app:x:1000:app
audio:x:29:app
staff:x:50:
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    etc = tmp_path / "root" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    return tmp_path / "root"


def test_root_path_keeps_symlinks_inside(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "real" / "passwd").write_text("x")
    os.symlink("/real/passwd", root / "etc" / "passwd")  # absolute: resolved inside root
    os.symlink("../../../../../../outside", root / "etc" / "group")  # climbs: stops at root
    os.symlink("loop", root / "loop")
    assert root_path(str(root), "/etc/passwd") == str(root / "real" / "passwd")
    assert root_path(str(root), "/etc/group") == str(root / "outside")
    assert root_path(str(root), "/etc/../../etc/./missing/x") == str(root / "etc" / "missing" / "x")
    with pytest.raises(OSError):
        root_path(str(root), "/loop/x")


@pytest.mark.parametrize(("user", "expected"), [
    ("app", (1000, 1000)),
    ("1000", (1000, 1000)),
    ("4242", (4242, 0)),  # an unknown uid runs with gid 0
    ("app:audio", (1000, 29)),
    ("1000:29", (1000, 29)),
    ("4242:staff", (4242, 50)),
    ("app:7", (1000, 7)),
])
def test_resolve_user(rootfs: Path, user: str, expected: tuple[int, int]) -> None:
    assert resolve_user(str(rootfs), user) == expected


def test_resolve_user_errors(rootfs: Path) -> None:
    with pytest.raises(NotFound, match='user "ghost": no users found'):
        resolve_user(str(rootfs), "ghost")
    with pytest.raises(NotFound, match='group "ghosts"'):
        resolve_user(str(rootfs), "app:ghosts")
    with pytest.raises(InvalidArgument, match="invalid USER value a:b:c"):
        resolve_user(str(rootfs), "a:b:c")
    assert resolve_user(None, "5:6") == (5, 6)  # numbers need no root filesystem


def test_additional_gids(rootfs: Path) -> None:
    assert additional_gids(str(rootfs), "app") == (10, 29)  # not the group named app
    assert additional_gids(str(rootfs), "1000") == (10, 29)
    assert additional_gids(str(rootfs), "root") == (10,)
    assert additional_gids(str(rootfs), "4242") == ()


def test_identity(rootfs: Path, tmp_path: Path) -> None:
    assert identity(str(rootfs), "") == Identity(0, 0, (0, 10))
    assert identity(str(rootfs), "app") == Identity(1000, 1000, (1000, 10, 29))
    assert identity(str(rootfs), "app:audio") == Identity(1000, 29, (10, 29))  # gid already listed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert identity(str(empty), "") == Identity(0, 0, (0,))
    assert identity(str(empty), "33") == Identity(33, 0, (0,))
    with pytest.raises(NotFound):
        identity(str(empty), "app")
