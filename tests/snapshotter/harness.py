"""A test harness around one snapshotter: its root, a work area, and mounts that get undone."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ctrpy.mount import Mount, mount_all, unmount_all
from ctrpy.snapshotter.base import Snapshotter

Factory = Callable[[Path], Snapshotter]


class Harness:
    """One snapshotter under test, built by ``factory`` on ``base/root``.

    Every mount made through :meth:`mount` is recorded and undone by :meth:`close`, whatever
    happened in between, so a failing test leaves no mount behind.
    """

    def __init__(self, factory: Factory, base: Path) -> None:
        self.factory = factory
        self.root = base / "root"
        self.work = base / "work"
        self.work.mkdir(parents=True)
        self._opened: list[Snapshotter] = []
        self._mounted: list[Path] = []
        self.sn = self.open()

    def open(self) -> Snapshotter:
        """Build another snapshotter on the same root (the previous one stays as it is)."""
        sn = self.factory(self.root)
        self._opened.append(sn)
        return sn

    def reopen(self) -> Snapshotter:
        """Close the current snapshotter and open a new one on the same root."""
        self.sn.close()
        self.sn = self.open()
        return self.sn

    def target(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def mount(self, mounts: Sequence[Mount], name: str) -> Path:
        """Mount ``mounts`` on ``work/<name>`` and return that directory."""
        path = self.target(name)
        self._mounted.append(path)
        mount_all(mounts, path)
        return path

    def unmount(self, path: Path) -> None:
        unmount_all(path)

    @contextmanager
    def mounted(self, mounts: Sequence[Mount], name: str) -> Iterator[Path]:
        """Mount for the length of a ``with`` block."""
        path = self.mount(mounts, name)
        try:
            yield path
        finally:
            self.unmount(path)

    def close(self) -> None:
        """Undo every mount (newest first), then close every snapshotter opened."""
        for path in reversed(self._mounted):
            unmount_all(path, detach=True)
        self._mounted.clear()
        for sn in self._opened:
            sn.close()


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def tree(root: Path) -> dict[str, str]:
    """``{relative path: content or "<dir>" or "-> target"}`` of everything under ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = "-> " + os.readlink(full)
            elif full.is_dir():
                out[rel] = "<dir>"
            elif full.is_file():
                out[rel] = full.read_text()
            else:
                out[rel] = "<special>"
    return out
