"""The native snapshotter: every active snapshot is a full copy of its parent.

It works on any filesystem (no overlayfs needed) at the price of disk space and of copying
time at each prepare. A snapshot's ``fs`` directory holds its whole tree; mounts are always
bind mounts, like containerd's native snapshotter's:

=========================  ==========================================================
snapshot                   mount
=========================  ==========================================================
active                     ``bind`` of its ``fs`` (a copy of the parent's), ``rw,rbind``
view, no parent            ``bind`` of its (empty) ``fs``, ``ro,rbind``
view of a layer            ``bind`` of the parent's ``fs``, ``ro,rbind`` (nothing copied)
=========================  ==========================================================

The copy keeps owners, modes, times, extended attributes, hard links, symbolic links and
device nodes (see :func:`ctrpy.snapshotter.fsutil.copy_tree`). Since a copy holds its
parent's files, the usage of a native snapshot includes them.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctrpy.mount import Mount

from .fsutil import copy_tree
from .local import LocalSnapshotter
from .storage import Snapshot
from .types import Kind

__all__ = ["NativeSnapshotter"]


class NativeSnapshotter(LocalSnapshotter):
    """Snapshots as plain directory copies under ``root``; see the module docstring."""

    def _fill(self, directory: Path, snapshot: Snapshot) -> None:
        if snapshot.kind == Kind.ACTIVE and snapshot.parent_ids:
            fs = directory / "fs"
            os.rmdir(fs)
            copy_tree(self.fs_path(snapshot.parent_ids[0]), fs)

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        if snapshot.kind == Kind.VIEW:
            source = self.fs_path(snapshot.parent_ids[0] if snapshot.parent_ids else snapshot.id)
            return [Mount(type="bind", source=str(source), options=("ro", "rbind"))]
        return [
            Mount(
                type="bind",
                source=str(self.fs_path(snapshot.id)),
                options=("rw", "rbind"),
            )
        ]
