"""The snapshotter interface: what every implementation promises, and what it raises.

A snapshotter allocates, layers and describes filesystem trees. It never mounts anything
itself: it returns :class:`~ctrpy.mount.Mount` descriptions, and whoever needs the tree (the
shim for a container's rootfs, the diff service, ``ctr images mount``, a test) performs them.

Snapshots, keys and names
=========================

A snapshot is a filesystem state. Every snapshot has a *parent*, the committed snapshot its
contents start from; the empty string is the empty parent, an empty directory. There are
three kinds:

- **active** snapshots are created by :meth:`Snapshotter.prepare`. Their mounts are
  writable; what is written through them is the snapshot's change set relative to its parent.
- **view** snapshots are created by :meth:`Snapshotter.view`: a read-only look at a parent.
  Their mounts may be read-only, writes through them fail or are lost, and they can never
  be committed.
- **committed** snapshots are created by :meth:`Snapshotter.commit` from an active one. They
  are immutable, they are the layers of images, and only they can be parents.

Active snapshots never become committed ones in place, nor the other way round: commit
creates a committed snapshot under a new *name* and the active *key* disappears. Keys and
names share one space per snapshotter: an active snapshot cannot have the key of a
committed one. In this interface ``key`` means an active or view snapshot, ``name`` a
committed one, and ``parent`` the committed parent in a relation; methods that accept
either say so. Keys are opaque, non-empty strings (containerd clients use keys like
``extract-123 sha256:...``); they are never used as paths.

The life of a layer
===================

Unpacking an image layer goes like this::

    mounts = sn.prepare("extract-1", parent=chain_id_below, labels={"containerd.io/gc.root": now})
    mount_all(mounts, tmpdir)          # the tree now shows the parent's content
    apply_layer_tar(tmpdir, layer)     # changes land in the active snapshot
    unmount_all(tmpdir)
    sn.commit(chain_id, "extract-1")   # a committed layer named chain_id; "extract-1" is gone

A container's rootfs is ``prepare(container_key, image_top_chain_id)``; its mounts are handed
to the runtime. When the container goes, ``remove(container_key)`` abandons the changes (or
``commit`` turns them into a new layer). ``view`` gives a read-only tree for inspection.

Errors
======

Every method raises the kinds of :mod:`ctrpy.errors`, with containerd's messages:

- :class:`~ctrpy.errors.NotFound`: no snapshot has that key or name, or the parent named
  in ``prepare``/``view`` does not exist.
- :class:`~ctrpy.errors.AlreadyExists`: ``prepare``/``view`` with a key in use, ``commit``
  to a name in use (by any kind of snapshot).
- :class:`~ctrpy.errors.FailedPrecondition`: ``remove`` of a snapshot that still has
  children; ``commit`` of a key that is not active (a view, or a committed snapshot);
  ``mounts`` of a committed snapshot.
- :class:`~ctrpy.errors.InvalidArgument`: an empty key or name, a parent that is not
  committed, a label too long, an update of a field other than labels, a malformed filter.

Bad input changes nothing. Implementations are safe to call from several threads at once;
the daemon calls them from worker threads, never from its event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, runtime_checkable

from ctrpy.mount import Mount

from .types import Info, Usage

__all__ = ["Snapshotter"]


@runtime_checkable
class Snapshotter(Protocol):
    """Layered filesystem trees described as mounts; see the module docstring."""

    def stat(self, key: str) -> Info:
        """The info of the active, view or committed snapshot called ``key``.

        Used to resolve parents, to test existence and to learn a snapshot's kind.
        Raises NotFound.
        """
        ...

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Change the mutable fields of snapshot ``info.name`` and return its new info.

        Only labels are mutable. ``fieldpaths`` names what to change: ``labels`` replaces all
        labels with ``info.labels``; ``labels.<key>`` (split at the first dot, so
        ``labels.containerd.io/gc.root`` is the key ``containerd.io/gc.root``) sets that one
        label from ``info.labels``, or deletes it when ``info.labels`` lacks it or maps it to
        the empty string. No paths at all means ``labels``. Every other field of ``info``
        (kind, parent, times) is ignored: clients send junk there. ``updated_at`` becomes now.
        Raises NotFound, InvalidArgument for any other field path or a label too long.
        """
        ...

    def usage(self, key: str) -> Usage:
        """Disk used by snapshot ``key`` itself, excluding its parents.

        For an active snapshot this walks its directory now, so it costs time proportional
        to its size; a committed snapshot's usage was measured when it was committed.
        Hard links count once. Raises NotFound.
        """
        ...

    def mounts(self, key: str) -> list[Mount]:
        """The mounts of active or view snapshot ``key``, as prepare or view returned them.

        Raises NotFound, FailedPrecondition for a committed snapshot.
        """
        ...

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create active snapshot ``key`` on committed ``parent`` and return its mounts.

        Mounted, the tree starts with the parent's content (an empty directory for no
        parent); changes made through the mounts belong to ``key`` and can be committed.
        ``labels`` become the snapshot's labels. Call :meth:`remove` when done.
        Raises AlreadyExists when ``key`` exists, NotFound when ``parent`` does not,
        InvalidArgument when ``parent`` is not committed or ``key`` is empty.
        """
        ...

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Like :meth:`prepare`, but read-only: the mounts show ``parent`` and refuse writes.

        A view cannot be committed; :meth:`remove` releases it. Raises as :meth:`prepare`.
        """
        ...

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active snapshot ``key`` into committed snapshot ``name``.

        The committed snapshot has the parent of ``key``, the given ``labels`` (the active
        snapshot's labels are not inherited), its usage measured now, and a new creation
        time. ``key`` no longer exists afterwards. Unmount the snapshot before committing.
        Raises AlreadyExists when ``name`` exists, NotFound when ``key`` does not,
        FailedPrecondition when ``key`` is a view or committed.
        """
        ...

    def remove(self, key: str) -> None:
        """Remove the active, view or committed snapshot ``key`` and its files.

        Raises NotFound, FailedPrecondition when other snapshots have it as parent (remove
        the children first). The key is free again as soon as this returns; disk space a
        failed deletion left behind is reclaimed by :meth:`cleanup`.
        """
        ...

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """The info of every snapshot matching any of ``filters``, all of them for none.

        Filters use containerd's filter syntax over the fields ``name``, ``parent``,
        ``kind`` (``active``, ``view``, ``committed``) and ``labels.<key>``, for example
        ``kind==committed,labels."containerd.io/gc.root"``. The snapshots are read at once,
        in no particular order, so the caller may call other methods while iterating.
        Raises InvalidArgument for a malformed filter, before returning.
        """
        ...

    def cleanup(self) -> None:
        """Delete directories that no snapshot owns: leftovers of crashed prepares and
        commits, and of removals whose deletion failed."""
        ...

    def close(self) -> None:
        """Release the metadata store. Further calls raise Unavailable; closing twice is
        fine. Reopening the same root later finds every snapshot as it was."""
        ...
