"""How the CLI prints: aligned tables for people, JSON for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print rows under headers, each column as wide as its widest cell (like ctr's tabwriter)."""
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        line = "    ".join(cell.ljust(width) for cell, width in zip(row, widths))
        sys.stdout.write(line.rstrip() + "\n")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Message):
        return json_format.MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def emit_json(value: Any) -> None:
    if isinstance(value, list):
        value = [to_jsonable(v) for v in value]
    else:
        value = to_jsonable(value)
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def timestamp_text(message: Message, field: str) -> str:
    if not message.HasField(field):
        return "-"
    stamp = getattr(message, field)
    return str(stamp.ToDatetime().isoformat(timespec="seconds")) + "Z"
