"""What the overlayfs and native snapshotters share: metadata, directories, their life cycle.

On disk, under the snapshotter's root::

    <root>/metadata.db              the MetaStore (see storage.py)
    <root>/snapshots/<id>/fs        the snapshot's files (overlay: its upper directory)
    <root>/snapshots/<id>/work      overlay's work directory (active overlay snapshots only)
    <root>/snapshots/new-XXXXXXXX   being built by a prepare or view (a crash leaves it)
    <root>/snapshots/rm-XXXXXXXX    being deleted (a crash leaves it)

Creating a snapshot builds ``new-*`` inside the write transaction and renames it to ``<id>``
before the transaction commits; when anything fails, the directory goes and the record is
rolled back. Removing renames ``<id>`` to ``rm-*`` inside the transaction and deletes it after
the commit. Anything under ``snapshots/`` that is not the directory of a recorded id is an
orphan, and :meth:`LocalSnapshotter.cleanup` deletes it.

Subclasses decide what fills a new snapshot directory and what its mounts are.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ctrpy import diskspace
from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.filters import parse_all, snapshot_adaptor
from ctrpy.mount import Mount

from .fsutil import disk_usage, remove_tree
from .storage import MetaStore, Snapshot, Transaction, check_key
from .types import Info, Kind, Usage

__all__ = ["LocalSnapshotter"]

_NEW_PREFIX = "new-"
_TRASH_PREFIX = "rm-"


class LocalSnapshotter:
    """A snapshotter keeping its metadata in ``<root>/metadata.db`` and files beside it."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.path.abspath(root))
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.snapshots_dir = self.root / "snapshots"
        self.snapshots_dir.mkdir(mode=0o700, exist_ok=True)
        self._store = MetaStore(self.root / "metadata.db")

    # --- what subclasses provide -------------------------------------------------------

    def _fill(self, directory: Path, snapshot: Snapshot) -> None:
        """Populate the new snapshot ``directory`` (whose ``fs`` exists, empty, mode 0755)."""
        raise NotImplementedError

    def _mounts(self, snapshot: Snapshot) -> list[Mount]:
        """The mounts of an active or view snapshot."""
        raise NotImplementedError

    def _usage_path(self, snapshot_id: int) -> Path:
        """The directory whose disk usage is the snapshot's own."""
        return self.fs_path(snapshot_id)

    # --- layout ------------------------------------------------------------------------

    def snapshot_path(self, snapshot_id: int) -> Path:
        """The directory of snapshot ``snapshot_id``."""
        return self.snapshots_dir / str(snapshot_id)

    def fs_path(self, snapshot_id: int) -> Path:
        """The file tree of snapshot ``snapshot_id``."""
        return self.snapshot_path(snapshot_id) / "fs"

    def work_path(self, snapshot_id: int) -> Path:
        """Overlay's work directory of snapshot ``snapshot_id``."""
        return self.snapshot_path(snapshot_id) / "work"

    # --- the Snapshotter protocol -------------------------------------------------------

    def stat(self, key: str) -> Info:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.stat`."""
        with self._store.transaction() as tx:
            return tx.get_info(key)[1]

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.update`."""
        with self._store.transaction(writable=True) as tx:
            return tx.update_info(info, fieldpaths)

    def usage(self, key: str) -> Usage:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.usage`."""
        with self._store.transaction() as tx:
            snapshot_id, info, usage = tx.get_info(key)
        if info.kind == Kind.ACTIVE:
            # Walked outside the transaction: it may take a while and needs no lock.
            try:
                usage = disk_usage(self._usage_path(snapshot_id))
            except FileNotFoundError:
                raise NotFound(f'snapshot "{key}"') from None  # removed meanwhile
        return usage

    def mounts(self, key: str) -> list[Mount]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.mounts`."""
        with self._store.transaction() as tx:
            snapshot = tx.get_snapshot(key)
        return self._mounts(snapshot)

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.prepare`."""
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.view`."""
        return self._create(Kind.VIEW, key, parent, labels)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.commit`."""
        check_key(name, "name")
        check_key(key)
        with self._store.transaction(writable=True) as tx:
            snapshot_id, info, _ = tx.get_info(key)
            # Measured inside the transaction so nothing can remove the directory meanwhile;
            # errors for the wrong kind come from commit_active, before the walk matters.
            usage = disk_usage(self._usage_path(snapshot_id)) if info.kind == Kind.ACTIVE else Usage()
            tx.commit_active(key, name, usage, labels)

    def remove(self, key: str) -> None:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.remove`."""
        check_key(key)
        moved: list[tuple[Path, Path]] = []
        with self._store.lock:
            try:
                with self._store.transaction(writable=True) as tx:
                    snapshot_id, _ = tx.remove(key)
                    moved = self._to_trash([self.snapshot_path(snapshot_id)])
            except BaseException:
                # The record is still there: give it its directory back.
                for original, trash in moved:
                    if trash != original:
                        os.rename(trash, original)
                raise
        for _, trash in moved:
            remove_tree(trash)

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.walk`."""
        if isinstance(filters, str):
            raise InvalidArgument("filters must be a sequence of strings, not one string")
        matcher = parse_all(list(filters))
        with self._store.transaction() as tx:
            infos = tx.infos()
        chosen = [
            info
            for info in infos
            if matcher.match(snapshot_adaptor(info.name, info.parent, info.kind.text, info.labels))
        ]
        return iter(chosen)

    def cleanup(self) -> None:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.cleanup`."""
        with self._store.transaction(writable=True) as tx:
            moved = self._to_trash(self._orphans(tx))
        for _, trash in moved:
            remove_tree(trash)

    def close(self) -> None:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.close`."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _create(self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None) -> list[Mount]:
        check_key(key)
        if parent:
            check_key(parent, "parent")
        building: Path | None = None
        final: Path | None = None
        # Held across the transaction and the repair after a failed one, so no other create
        # can be handed the same (rolled back) id in between.
        with self._store.lock:
            try:
                with (
                    self._store.transaction(writable=True) as tx,
                    # A full disk: ResourceExhausted, once the except below removed the files.
                    diskspace.guard(f'creating snapshot "{key}"', self.snapshots_dir),
                ):
                    # Made under the write lock, so a concurrent cleanup (same lock) never
                    # mistakes it for a crash leftover.
                    building = Path(tempfile.mkdtemp(prefix=_NEW_PREFIX, dir=self.snapshots_dir))
                    os.chmod(building, 0o755)
                    (building / "fs").mkdir()
                    os.chmod(building / "fs", 0o755)  # whatever the umask
                    snapshot = tx.create_snapshot(kind, key, parent, labels)
                    self._fill(building, snapshot)
                    target = self.snapshot_path(snapshot.id)
                    if os.path.lexists(target):
                        # Left by a crash between rename and commit: that id was never
                        # committed, so no record owns the directory.
                        remove_tree(target)
                    os.rename(building, target)
                    building, final = None, target
            except BaseException:
                for leftover in (building, final):
                    if leftover is not None:
                        remove_tree(leftover)
                raise
        return self._mounts(snapshot)

    def _orphans(self, tx: Transaction) -> list[Path]:
        owned = {str(i) for i in tx.ids()}
        return [self.snapshots_dir / name for name in os.listdir(self.snapshots_dir) if name not in owned]

    def _to_trash(self, paths: list[Path]) -> list[tuple[Path, Path]]:
        """Rename ``paths`` to ``rm-*`` names (inside a transaction).

        Returns (original, where it is now) pairs; something that cannot be renamed (busy,
        or not a directory) stays where it is and is deleted there.
        """
        moved: list[tuple[Path, Path]] = []
        for path in paths:
            if path.name.startswith(_TRASH_PREFIX):
                moved.append((path, path))
                continue
            trash = Path(tempfile.mkdtemp(prefix=_TRASH_PREFIX, dir=self.snapshots_dir))
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                os.rmdir(trash)
                continue
            except OSError:
                os.rmdir(trash)
                moved.append((path, path))
                continue
            moved.append((path, trash))
        return moved


if TYPE_CHECKING:
    from .base import Snapshotter

    def _conforms(implementation: LocalSnapshotter) -> Snapshotter:
        # mypy proves here that LocalSnapshotter satisfies the Snapshotter protocol.
        return implementation
