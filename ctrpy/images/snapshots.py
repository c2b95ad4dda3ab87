"""Snapshots over the Snapshots API, for unpacking, mounting and the CLI.

Keys are the client's names for active snapshots and views; names are those of committed ones
(for unpacked layers, their chain ids). All functions raise :mod:`ctrpy.errors` kinds: NotFound
for a missing key or parent, AlreadyExists for a key or name in use, FailedPrecondition for a
snapshot in the wrong state (committing a view, removing a parent).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from google.protobuf import field_mask_pb2

from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as api
from ctrpy.client import Client
from ctrpy.images.content import timestamp
from ctrpy.images.convert import mount_from_proto
from ctrpy.images.model import Labels
from ctrpy.mount import Mount

KINDS = {api.VIEW: "View", api.ACTIVE: "Active", api.COMMITTED: "Committed"}
GC_ROOT = "containerd.io/gc.root"


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot: its key or name, its parent, kind (View, Active, Committed) and labels."""

    name: str
    parent: str
    kind: str
    labels: Labels = field(default_factory=lambda: MappingProxyType({}))
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Usage:
    """Disk usage of one snapshot's own layer."""

    size: int
    inodes: int


def _info(message: api.Info) -> SnapshotInfo:
    return SnapshotInfo(message.name, message.parent, KINDS.get(message.kind, "Unknown"),
                        MappingProxyType(dict(message.labels)), timestamp(message.created_at),
                        timestamp(message.updated_at))


def stat(client: Client, snapshotter: str, key: str) -> SnapshotInfo:
    return _info(client.call(client.snapshots.Stat, api.StatSnapshotRequest(snapshotter=snapshotter, key=key)).info)


def prepare(client: Client, snapshotter: str, key: str, parent: str = "",
            labels: Mapping[str, str] | None = None) -> list[Mount]:
    """Create the active snapshot ``key`` on ``parent``; return how to mount it."""
    request = api.PrepareSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {}))
    return [mount_from_proto(m) for m in client.call(client.snapshots.Prepare, request).mounts]


def view(client: Client, snapshotter: str, key: str, parent: str = "",
         labels: Mapping[str, str] | None = None) -> list[Mount]:
    """Create the read-only view ``key`` of ``parent``; return how to mount it."""
    request = api.ViewSnapshotRequest(snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels or {}))
    return [mount_from_proto(m) for m in client.call(client.snapshots.View, request).mounts]


def mounts(client: Client, snapshotter: str, key: str) -> list[Mount]:
    request = api.MountsRequest(snapshotter=snapshotter, key=key)
    return [mount_from_proto(m) for m in client.call(client.snapshots.Mounts, request).mounts]


def commit(client: Client, snapshotter: str, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
    """Turn the active snapshot ``key`` into the committed snapshot ``name``."""
    client.call(client.snapshots.Commit,
                api.CommitSnapshotRequest(snapshotter=snapshotter, name=name, key=key, labels=dict(labels or {})))


def remove(client: Client, snapshotter: str, key: str) -> None:
    client.call(client.snapshots.Remove, api.RemoveSnapshotRequest(snapshotter=snapshotter, key=key))


def list_snapshots(client: Client, snapshotter: str, filters: Iterable[str] = ()) -> Iterator[SnapshotInfo]:
    request = api.ListSnapshotsRequest(snapshotter=snapshotter, filters=list(filters))
    for response in client.stream(client.snapshots.List, request):
        for item in response.info:
            yield _info(item)


def usage(client: Client, snapshotter: str, key: str) -> Usage:
    response = client.call(client.snapshots.Usage, api.UsageRequest(snapshotter=snapshotter, key=key))
    return Usage(response.size, response.inodes)


def update_labels(client: Client, snapshotter: str, key: str, labels: Mapping[str, str]) -> SnapshotInfo:
    """Set labels on a snapshot (an empty value removes the label); other labels stay."""
    request = api.UpdateSnapshotRequest(
        snapshotter=snapshotter,
        info=api.Info(name=key, labels={k: v for k, v in labels.items() if v}),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
    )
    return _info(client.call(client.snapshots.Update, request).info)
