"""Mounting an image's root filesystem on a directory, and taking it down again.

As ``ctr images mount`` does: a lease named after the target directory (expiring in 24 h, and
holding the snapshot through ``containerd.io/gc.ref.snapshot.<snapshotter>``) stays while the
image is mounted; the image is unpacked if needed, a view (or, with ``rw``, an active
snapshot) keyed by the target is made on its top chain id, and its mounts are performed here.
:func:`unmount` undoes the mounts and, with ``remove``, deletes the lease and the snapshot.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from ctrpy import errors
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.client import EXPIRE_LABEL, LEASE_EXPIRY, Client
from ctrpy.images import platforms, snapshots, store
from ctrpy.images.platforms import Matcher
from ctrpy.images.unpack import SNAPSHOT_REF_LABEL, resolve_snapshotter
from ctrpy.images.unpack import unpack as unpack_image
from ctrpy.mount import mount_all, unmount_all


def _create_lease(client: Client, lease_id: str, snapshotter: str) -> bool:
    """Create the mount's lease; False when it exists already (a second mount of the target)."""
    expires = (datetime.now(UTC) + LEASE_EXPIRY).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = {EXPIRE_LABEL: expires, SNAPSHOT_REF_LABEL + snapshotter: lease_id}
    try:
        client.call(client.leases.Create, leases_pb2.CreateRequest(id=lease_id, labels=labels))
    except errors.AlreadyExists:
        return False
    return True


def _delete_lease(client: Client, lease_id: str) -> None:
    try:
        client.call(client.leases.Delete, leases_pb2.DeleteRequest(id=lease_id))
    except errors.NotFound:
        pass


def mount(client: Client, ref: str, target: str | os.PathLike[str], *, rw: bool = False,
          snapshotter: str | None = None, matcher: Matcher | None = None) -> str:
    """Mount image ``ref`` on the directory ``target`` and return its top chain id.

    The snapshot key and the lease id are ``target`` as given. Read-only unless ``rw``. If the
    key exists already, its mounts are reused. Raises NotFound for an unknown image, OSError when
    the mount itself fails (the snapshot is then removed), and what unpacking raises.
    """
    key = os.fspath(target)
    name = snapshotter or resolve_snapshotter(client)
    created = _create_lease(client, key, name)
    try:
        with client.using_lease(key):
            image = store.get(client, ref)
            chain = unpack_image(client, image, name, matcher or platforms.default())
            try:
                made = (snapshots.prepare if rw else snapshots.view)(client, name, key, chain)
            except errors.AlreadyExists:
                made = snapshots.mounts(client, name, key)
            try:
                mount_all(made, key)
            except OSError:
                try:
                    snapshots.remove(client, name, key)
                except errors.NotFound:
                    pass
                raise
            return chain
    except BaseException:
        if created:
            try:
                _delete_lease(client, key)
            except errors.CtrpyError:
                pass
        raise


def unmount(client: Client, target: str | os.PathLike[str], *, remove: bool = False,
            snapshotter: str | None = None) -> None:
    """Unmount everything stacked on ``target``; with ``remove``, also delete the lease and the
    snapshot named after it (missing ones are fine). Raises OSError when unmounting fails."""
    key = os.fspath(target)
    unmount_all(key)
    if remove:
        name = snapshotter or resolve_snapshotter(client)
        _delete_lease(client, key)
        try:
            snapshots.remove(client, name, key)
        except errors.NotFound:
            pass
