"""Mount destinations resolved as runc resolves them (securejoin), and the /proc rule on them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.oci.mounts import MAX_SYMLINKS, TooManyLinks, Unresolvable, check_mounts, resolve

LINKS = {
    "/myproc": "/proc",
    "/d": "/",
    "/rel": "proc",
    "/x/y/up": "../../proc",
    "/x/y/far": "../../../../../../proc",
    "/chain": "/myproc",
    "/loop1": "/loop2",
    "/loop2": "/loop1",
    "/data-link": "/data",
    "/escape": "/../../../etc",
}


def fake(path: str) -> str | None:
    assert path.startswith("/") and os.path.normpath(path) == path, path
    return LINKS.get(path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/proc", "/proc"),
        ("proc", "/proc"),
        ("//proc/.", "/proc"),
        ("/a/../proc", "/proc"),
        ("/../../proc", "/proc"),
        ("/myproc", "/proc"),
        ("/d/proc", "/proc"),
        ("/d/d/d/myproc", "/proc"),
        ("/rel", "/proc"),
        ("/x/y/up", "/proc"),
        ("/x/y/far", "/proc"),  # .. stops at the root
        ("/chain", "/proc"),
        ("/myproc/sys", "/proc/sys"),
        ("/data-link/sub", "/data/sub"),
        ("/escape", "/etc"),
        ("/x/y/../y/z", "/x/y/z"),
        ("/", "/"),
        ("", "/"),
    ],
)
def test_resolve(path: str, expected: str) -> None:
    assert resolve(path, fake) == expected


def test_resolve_bounds_the_links() -> None:
    with pytest.raises(TooManyLinks, match="more than 255 symbolic links"):
        resolve("/loop1", fake)
    chain = {f"/l{n}": f"/l{n + 1}" for n in range(MAX_SYMLINKS)}
    assert resolve("/l0", chain.get) == f"/l{MAX_SYMLINKS}"  # exactly 255 links is fine
    chain[f"/l{MAX_SYMLINKS}"] = "/end"
    with pytest.raises(TooManyLinks):
        resolve("/l0", chain.get)


def proc_bind(destination: str, **extra: Any) -> dict[str, Any]:
    return {"destination": destination, "type": "bind", "source": "/proc", "options": ["rbind", "rw"], **extra}


NEW_PROC = {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    for directory in ("proc", "data", "x/y", "etc"):
        (root / directory).mkdir(parents=True)
    for link, target in LINKS.items():
        os.symlink(target, root / link.lstrip("/"))
    return root


def test_literal_check_without_a_rootfs() -> None:
    check_mounts("c", None)
    check_mounts("c", [NEW_PROC, proc_bind("/myproc")])  # a symlink only the rootfs can show
    for destination in ("/proc", "//proc/.", "proc", "/a/../proc"):
        with pytest.raises(InvalidArgument, match='container "c": /proc must be a new proc filesystem'):
            check_mounts("c", [NEW_PROC, proc_bind(destination)])
    with pytest.raises(InvalidArgument, match="not a none mount"):
        check_mounts("c", [{"destination": "/proc", "type": "none", "source": "/proc", "options": ["bind"]}])
    with pytest.raises(InvalidArgument, match="must be a list of objects"):
        check_mounts("c", {"destination": "/proc"})


@pytest.mark.parametrize("destination", ["/myproc", "/d/proc", "/d/d/myproc", "/rel", "/x/y/up", "/x/y/far", "/chain"])
def test_symlinks_in_the_rootfs_reaching_proc_are_refused(rootfs: Path, destination: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_mounts("c", [NEW_PROC, proc_bind(destination)], str(rootfs))
    assert "/proc must be a new proc filesystem, not a bind mount of '/proc'" in caught.value.message
    assert f"resolved through symbolic links from {destination!r}" in caught.value.message


def test_legit_mounts_pass(rootfs: Path) -> None:
    mounts = [
        NEW_PROC,
        {"destination": "/myproc", "type": "proc", "source": "proc"},  # a new procfs, wherever
        {"destination": "/data-link/sub", "type": "bind", "source": "/tmp", "options": ["rbind"]},
        {"destination": "/myproc/cpuinfo", "type": "bind", "source": "/tmp/x", "options": ["bind"]},
        {"destination": "/escape/hosts", "type": "bind", "source": "/etc/hosts", "options": ["bind"]},
        {"destination": "/nonexistent/proc", "type": "bind", "source": "/proc", "options": ["rbind"]},
    ]
    check_mounts("c", mounts, str(rootfs))


def test_loops_are_refused(rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="mount destination '/loop1': more than 255"):
        check_mounts("c", [{"destination": "/loop1", "type": "tmpfs", "source": "tmpfs"}], str(rootfs))


def test_earlier_bind_mounts_count(tmp_path: Path, rootfs: Path) -> None:
    """A destination under an earlier bind is resolved in that bind's source, as runc sees it."""
    outside = tmp_path / "volume"
    outside.mkdir()
    os.symlink("/proc", outside / "p")
    volume = {"destination": "/data", "type": "bind", "source": str(outside), "options": ["rbind"]}
    with pytest.raises(InvalidArgument, match="resolved through symbolic links from '/data/p'"):
        check_mounts("c", [NEW_PROC, volume, proc_bind("/data/p")], str(rootfs))
    # A tmpfs mounted over /x hides the image's /x/y/up link.
    hidden = {"destination": "/x", "type": "tmpfs", "source": "tmpfs"}
    check_mounts("c", [NEW_PROC, hidden, proc_bind("/x/y/up")], str(rootfs))


def test_process_entries_of_proc_are_refused(rootfs: Path) -> None:
    with pytest.raises(Unresolvable, match="goes through a process's entry in /proc"):
        check_mounts("c", [NEW_PROC, proc_bind("/proc/self/root/proc")], str(rootfs))
    with pytest.raises(InvalidArgument):
        check_mounts("c", [NEW_PROC, proc_bind("/proc/1/root/proc")], str(rootfs))
