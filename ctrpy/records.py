"""The domain records that ctrpyd stores: plain frozen dataclasses, never protobuf messages.

One conversion module per service (``manager/services/convert_*.py``) turns them into API
messages and back. Times are timezone-aware UTC datetimes, or ``None`` when unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

Labels = Mapping[str, str]

EMPTY_LABELS: Labels = MappingProxyType({})


def freeze(labels: Mapping[str, str] | None) -> Labels:
    """A read-only copy of ``labels`` (records are immutable all the way down)."""
    return MappingProxyType(dict(labels or {}))


@dataclass(frozen=True)
class AnyValue:
    """An opaque ``google.protobuf.Any``: ctrpyd stores and echoes it byte for byte (G14)."""

    type_url: str
    value: bytes


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Labels = field(default_factory=lambda: EMPTY_LABELS)


@dataclass(frozen=True)
class Runtime:
    name: str
    options: AnyValue | None = None


@dataclass(frozen=True)
class Container:
    id: str
    labels: Labels = field(default_factory=lambda: EMPTY_LABELS)
    image: str = ""
    runtime: Runtime = Runtime(name="")
    spec: AnyValue | None = None
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: Mapping[str, AnyValue] = field(default_factory=lambda: MappingProxyType({}))
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Labels = field(default_factory=lambda: EMPTY_LABELS)


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: Labels = field(default_factory=lambda: EMPTY_LABELS)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Lease:
    id: str
    labels: Labels = field(default_factory=lambda: EMPTY_LABELS)
    created_at: datetime | None = None


@dataclass(frozen=True)
class LeaseResource:
    """A resource held by a lease: ``type`` is e.g. ``content``, ``snapshots/overlayfs``, ``ingests``."""

    id: str
    type: str
