"""Conversions between records and sqlite column values, shared by the store modules."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType

from ctrpy import namespaces
from ctrpy.errors import InvalidArgument
from ctrpy.records import EMPTY_LABELS, AnyValue, Labels

# containerd's limit (pkg/labels): a label's key and value together.
MAX_LABEL_SIZE = 4096


def now_ns() -> int:
    return time.time_ns()


def to_datetime(ns: int | None) -> datetime | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def dump_labels(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


def load_labels(text: str) -> Labels:
    """Labels from their column: most rows hold none, and json.loads' dict needs no copy."""
    if text == "{}":
        return EMPTY_LABELS
    return MappingProxyType(json.loads(text))


def validate_label_sizes(labels: Mapping[str, str]) -> None:
    """The size half of :func:`validate_labels`, for what containerd checks before it looks
    an object up; an empty key is refused later, where its store refuses it."""
    for key, value in labels.items():
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {key[:10]}"
            )


def validate_labels(labels: Mapping[str, str]) -> None:
    """containerd's rule: key and value together at most 4096 bytes, and keys not empty."""
    for key, value in labels.items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {key[:10]}"
            )


def dump_any(value: AnyValue | None) -> str | None:
    if value is None:
        return None
    return json.dumps(
        {"type_url": value.type_url, "value": base64.b64encode(value.value).decode("ascii")}
    )


def load_any(text: str | None) -> AnyValue | None:
    if text is None:
        return None
    data = json.loads(text)
    return AnyValue(type_url=data["type_url"], value=base64.b64decode(data["value"]))


def ensure_namespace(conn: sqlite3.Connection, namespace: str) -> bool:
    """Create ``namespace`` if this is the first write into it (containerd does the same).

    Returns True when it was created.
    """
    stamp = now_ns()
    cursor = conn.execute(
        "INSERT OR IGNORE INTO namespaces (name, labels, created_at, updated_at) VALUES (?, '{}', ?, ?)",
        (namespace, stamp, stamp),
    )
    return cursor.rowcount > 0


def current_namespace() -> str:
    """The call's namespace, required (see :mod:`ctrpy.namespaces`)."""
    return namespaces.require()
