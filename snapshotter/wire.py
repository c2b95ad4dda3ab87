"""Snapshot values as ``containerd.services.snapshots.v1`` messages, and back.

The one place where the snapshotter's domain types meet protobuf: the standalone server, the
proxy client and ctrpyd's Snapshots servicer all convert through here, so the three agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as api
from ctrpy.api.containerd.types import mount_pb2
from ctrpy.errors import InvalidArgument
from ctrpy.mount import Mount

from .types import EPOCH, Info, Kind, Usage

__all__ = [
    "LIST_BATCH",
    "info_from_proto",
    "info_to_proto",
    "mounts_from_proto",
    "mounts_to_proto",
    "usage_from_proto",
    "usage_to_proto",
]

# Snapshots.List answers in messages of this many infos, as containerd's service does.
LIST_BATCH = 100


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


# The range a datetime can hold (years 1 to 9999).
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799


def _datetime(stamp: timestamp_pb2.Timestamp) -> datetime:
    """Raises InvalidArgument for a timestamp a datetime cannot hold, or nanos out of range."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return EPOCH
    if not _MIN_SECONDS <= stamp.seconds <= _MAX_SECONDS or not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(f"timestamp {stamp.seconds}s {stamp.nanos}ns is out of range")
    # Microseconds survive the round trip exactly; a finer part is dropped.
    return datetime.fromtimestamp(stamp.seconds, UTC).replace(microsecond=stamp.nanos // 1000)


def info_to_proto(info: Info) -> api.Info:
    return api.Info(
        name=info.name,
        parent=info.parent,
        kind=int(info.kind),  # type: ignore[arg-type]  # the wire numbers are Kind's values
        created_at=_timestamp(info.created_at),
        updated_at=_timestamp(info.updated_at),
        labels=dict(info.labels),
    )


def info_from_proto(message: api.Info) -> Info:
    """An :class:`Info`; an unknown kind number becomes ``Kind.UNKNOWN``."""
    try:
        kind = Kind(message.kind)
    except ValueError:
        kind = Kind.UNKNOWN
    return Info(
        name=message.name,
        parent=message.parent,
        kind=kind,
        labels=dict(message.labels),
        created_at=_datetime(message.created_at),
        updated_at=_datetime(message.updated_at),
    )


def mounts_to_proto(mounts: Iterable[Mount]) -> list[mount_pb2.Mount]:
    """The mounts exactly as given: type, source, target and options, in order."""
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


def mounts_from_proto(messages: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options)) for m in messages]


def usage_to_proto(usage: Usage) -> api.UsageResponse:
    return api.UsageResponse(size=usage.size, inodes=usage.inodes)


def usage_from_proto(message: api.UsageResponse) -> Usage:
    return Usage(size=message.size, inodes=message.inodes)
