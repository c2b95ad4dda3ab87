"""The overlayfs snapshotter: each snapshot stores only its changes, stacked at mount time.

A snapshot's ``fs`` directory is its overlay upper directory. Mounting an active snapshot
stacks its parents' ``fs`` directories, nearest first, as ``lowerdir``, with its own ``fs`` as
``upperdir``; deletions of lower files become overlay whiteouts in the upper directory, and
that upper directory is exactly the layer's change set when it is committed. The mounts
returned, like containerd's overlayfs snapshotter's:

=========================  ===========================================================
snapshot                   mounts
=========================  ===========================================================
active, no parent          ``bind`` of its ``fs``, options ``rw,rbind``
view, no parent            ``bind`` of its (empty) ``fs``, options ``ro,rbind``
view of one layer          ``bind`` of the parent's ``fs``, options ``ro,rbind``
active with parents        ``overlay``: ``workdir=``, ``upperdir=``, ``lowerdir=`` parents
view of several layers     ``overlay``: ``lowerdir=`` parents only (overlay is then read-only)
=========================  ===========================================================

Every path is absolute, so root on this host can perform the mounts as they are, with
mount(8), :func:`ctrpy.mount.mount_all`, or a containerd client such as ``ctr``. Deep stacks
can exceed the one-page limit of mount options; :func:`ctrpy.mount.mount_all` and containerd's
mount code both shorten the lowerdirs relative to ``<root>/snapshots`` then.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ctrpy.errors import FailedPrecondition
from ctrpy.mount import Mount, mount, unmount_all

from .fsutil import remove_tree
from .local import LocalSnapshotter
from .storage import Snapshot
from .types import Kind

__all__ = ["OverlaySnapshotter", "check_overlay_support"]

_FILESYSTEMS = "/proc/filesystems"


def _kernel_has_overlay() -> bool:
    try:
        with open(_FILESYSTEMS, encoding="ascii", errors="replace") as f:
            return any(line.split()[-1:] == ["overlay"] for line in f)
    except OSError:
        return False


def check_overlay_support(root: str | os.PathLike[str]) -> None:
    """Check that overlayfs works with upper directories under ``root``.

    The kernel must list ``overlay`` in /proc/filesystems, and a small overlay with its
    upper and work directories in ``root`` must mount (it fails, for instance, when ``root``
    is itself on overlayfs). Raises FailedPrecondition with the reason otherwise.
    """
    if not _kernel_has_overlay():
        raise FailedPrecondition(
            'overlayfs is not available: the kernel lists no "overlay" in /proc/filesystems '
            "(load the overlay module, or use the native snapshotter)"
        )
    probe = Path(tempfile.mkdtemp(prefix="new-overlay-check-", dir=root))
    try:
        for name in ("lower1", "lower2", "upper", "work", "merged"):
            (probe / name).mkdir()
        options = (
            f"lowerdir={probe / 'lower2'}:{probe / 'lower1'}",
            f"upperdir={probe / 'upper'}",
            f"workdir={probe / 'work'}",
        )
        try:
            mount(
                Mount(type="overlay", source="overlay", options=options),
                str(probe / "merged"),
            )
        except OSError as exc:
            raise FailedPrecondition(
                f"overlayfs cannot use {os.fspath(root)} for upper directories: {exc.strerror} "
                "(is it on overlayfs itself? use the native snapshotter there)"
            ) from exc
        unmount_all(probe / "merged", detach=True)
    finally:
        remove_tree(probe)


def _supports_index_option() -> bool:
    # The "index" feature exists when the module exposes its parameter; containerd then
    # mounts with index=off so that lower directories can be shared by many mounts.
    return os.path.exists("/sys/module/overlay/parameters/index")


class OverlaySnapshotter(LocalSnapshotter):
    """Snapshots as overlayfs layers under ``root``; see the module docstring.

    Raises FailedPrecondition at construction when overlayfs cannot work there.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__(root)
        try:
            # Probed inside snapshots/, so a crash mid-check leaves an orphan that
            # cleanup() removes.
            check_overlay_support(self.snapshots_dir)
        except BaseException:
            self.close()
            raise
        self._extra_options: tuple[str, ...] = ("index=off",) if _supports_index_option() else ()

    def _fill(self, directory: Path, snapshot: Snapshot) -> None:
        if snapshot.kind == Kind.ACTIVE:
            (directory / "work").mkdir(mode=0o711)
        if snapshot.parent_ids:
            # The upper directory's owner becomes the owner of the mounted root: keep the
            # parent's, so an image whose root belongs to someone else stays that way.
            st = os.stat(self.fs_path(snapshot.parent_ids[0]))
            os.lchown(directory / "fs", st.st_uid, st.st_gid)

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        parents = snapshot.parent_ids
        if not parents:
            flag = "ro" if snapshot.kind == Kind.VIEW else "rw"
            return [
                Mount(
                    type="bind",
                    source=str(self.fs_path(snapshot.id)),
                    options=(flag, "rbind"),
                )
            ]
        if snapshot.kind == Kind.VIEW and len(parents) == 1:
            return [
                Mount(
                    type="bind",
                    source=str(self.fs_path(parents[0])),
                    options=("ro", "rbind"),
                )
            ]
        # In containerd's order: index=off first, then the directories.
        options: list[str] = list(self._extra_options)
        if snapshot.kind == Kind.ACTIVE:
            options.append(f"workdir={self.work_path(snapshot.id)}")
            options.append(f"upperdir={self.fs_path(snapshot.id)}")
        options.append("lowerdir=" + ":".join(str(self.fs_path(p)) for p in parents))
        return [Mount(type="overlay", source="overlay", options=tuple(options))]
