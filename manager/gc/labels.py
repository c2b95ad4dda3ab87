"""The labels that steer garbage collection, and what each one means.

All are containerd's (``core/metadata/gc.go``); clients such as ctr set them:

- ``containerd.io/gc.root`` (any value): the object is a root and never collected.
- ``containerd.io/gc.ref.content`` (optionally followed by ``.<name>`` or ``/<name>``): the
  object keeps the content whose digest is the value.
- ``containerd.io/gc.ref.snapshot.<snapshotter>`` (optionally followed by ``/<name>``): the
  object keeps that snapshotter's snapshot whose key is the value.
- ``containerd.io/gc.ref.image`` (naming as for content): the object keeps the image named by
  the value (images are roots anyway; the reference matters for nothing else here).
- ``containerd.io/gc.bref.content``, ``.bref.snapshot.<snapshotter>``, ``.bref.container``,
  ``.bref.image``: a back reference. The labelled object is kept for as long as the object
  named by the value is kept, without that object having to point at it.
- ``containerd.io/gc.expire`` on a lease: an RFC 3339 time after which the lease holds nothing.
- ``containerd.io/gc.flat`` on a lease: it keeps only the objects it lists (and the parents of
  its snapshots), not what those reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone

ROOT = "containerd.io/gc.root"
EXPIRE = "containerd.io/gc.expire"
FLAT = "containerd.io/gc.flat"

_REF_CONTENT = "containerd.io/gc.ref.content"
_REF_IMAGE = "containerd.io/gc.ref.image"
_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
_BREF_CONTENT = "containerd.io/gc.bref.content"
_BREF_CONTAINER = "containerd.io/gc.bref.container"
_BREF_IMAGE = "containerd.io/gc.bref.image"
_BREF_SNAPSHOT = "containerd.io/gc.bref.snapshot."

#: The kinds of objects a reference can name.
CONTENT = "content"
SNAPSHOT = "snapshot"
IMAGE = "image"
CONTAINER = "container"

# RFC 3339 as Go's time.RFC3339 reads it: fractions of any length, Z or a numeric offset.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def _named(key: str, prefix: str) -> bool:
    """``key`` is ``prefix`` itself or ``prefix`` followed by ``.`` or ``/`` and a name."""
    return key == prefix or (key.startswith(prefix) and key[len(prefix)] in "./")


def _snapshotter(key: str, prefix: str) -> str:
    """The snapshotter named after ``prefix`` in ``key`` (a ``/<name>`` suffix ignored)."""
    return key[len(prefix):].split("/", 1)[0]


def references(labels: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """The ``(kind, key)`` of every object the ``gc.ref`` labels point at; a snapshot's key is
    ``<snapshotter>/<snapshot key>``. Labels with an empty value or snapshotter are ignored."""
    for key, value in labels.items():
        if not value:
            continue
        if _named(key, _REF_CONTENT):
            yield CONTENT, value
        elif _named(key, _REF_IMAGE):
            yield IMAGE, value
        elif key.startswith(_REF_SNAPSHOT) and (snapshotter := _snapshotter(key, _REF_SNAPSHOT)):
            yield SNAPSHOT, f"{snapshotter}/{value}"


def back_references(labels: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """The ``(kind, key)`` of every object the ``gc.bref`` labels attach the labelled object to."""
    for key, value in labels.items():
        if not value:
            continue
        if _named(key, _BREF_CONTENT):
            yield CONTENT, value
        elif _named(key, _BREF_CONTAINER):
            yield CONTAINER, value
        elif _named(key, _BREF_IMAGE):
            yield IMAGE, value
        elif key.startswith(_BREF_SNAPSHOT) and (snapshotter := _snapshotter(key, _BREF_SNAPSHOT)):
            yield SNAPSHOT, f"{snapshotter}/{value}"


def is_root(labels: Mapping[str, str]) -> bool:
    """Whether the object is labelled a root."""
    return ROOT in labels


def is_flat(labels: Mapping[str, str]) -> bool:
    """Whether a lease keeps only what it lists."""
    return FLAT in labels


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time as an aware datetime, or None when ``text`` is not one.

    Fractions beyond microseconds are cut (Go writes nanoseconds).
    """
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    zone = UTC
    if not zulu:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        zone = timezone(-offset if sign == "-" else offset)
    try:
        return datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=zone
        )
    except ValueError:
        return None


def expires_at(labels: Mapping[str, str]) -> datetime | None:
    """When the ``gc.expire`` label says the object expires; None without a valid one
    (containerd ignores an unreadable value and keeps the lease)."""
    value = labels.get(EXPIRE)
    return parse_time(value) if value is not None else None
