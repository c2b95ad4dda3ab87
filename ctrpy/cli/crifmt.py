"""What the ``ctrpy cri`` commands print, as crictl prints it: messages as camelCase JSON with
defaults left out, verbose info values decoded where they are JSON, ages in words."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message


def as_dict(message: Message) -> dict[str, Any]:
    """A message as crictl prints it: camelCase JSON names, defaults omitted."""
    return json_format.MessageToDict(message)


def with_info(base: dict[str, Any], info: Mapping[str, str]) -> dict[str, Any]:
    """``base`` plus each info value, decoded when it is JSON (as crictl shows them)."""
    for key, value in info.items():
        try:
            base[key] = json.loads(value)
        except ValueError:
            base[key] = value
    return base


def age(created_ns: int) -> str:
    """How long ago ``created_ns`` was, as crictl's tables say it."""
    seconds = max(0, int(time.time() - created_ns / 1e9))
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} seconds ago"
