"""The snapshotter's domain types: plain frozen dataclasses, never protobuf messages.

The numbers of :class:`Kind` are those of ``containerd.services.snapshots.v1.Kind`` on the
wire, so a servicer converts by value. Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from ctrpy.errors import InvalidArgument
from ctrpy.mount import Mount

__all__ = ["EPOCH", "Info", "Kind", "Mount", "Usage", "freeze_labels"]

EPOCH = datetime.fromtimestamp(0, UTC)


class Kind(enum.IntEnum):
    """What a snapshot is: a read-only view, a writable active one, or a committed layer."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def text(self) -> str:
        """The lower-case word filters and ``ctr`` use: ``view``, ``active``, ``committed``."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Kind:
        """The kind named by ``text`` (any case); raises :class:`InvalidArgument` otherwise."""
        try:
            return cls[text.upper()]
        except KeyError:
            raise InvalidArgument(f'unknown snapshot kind "{text}"') from None


def freeze_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    """A read-only copy of ``labels`` (domain values are immutable all the way down)."""
    return MappingProxyType(dict(labels or {}))


@dataclass(frozen=True)
class Info:
    """What the snapshotter knows of one snapshot.

    ``name`` is the key of an active or view snapshot, or the name of a committed one;
    ``parent`` the name of its committed parent, empty for none.
    """

    name: str
    parent: str = ""
    kind: Kind = Kind.UNKNOWN
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    created_at: datetime = EPOCH
    updated_at: datetime = EPOCH

    def __post_init__(self) -> None:
        if not isinstance(self.labels, MappingProxyType):
            object.__setattr__(self, "labels", freeze_labels(self.labels))


@dataclass(frozen=True)
class Usage:
    """Disk used by one snapshot alone (not its parents): bytes of blocks, and inodes."""

    size: int = 0
    inodes: int = 0
