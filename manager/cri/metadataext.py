"""The metadata extension containerd's CRI keeps on each container record: a JSON document of
the pod's or container's facts and the config it was made from, which ``ctr -n k8s.io
containers info`` shows."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from ctrpy.records import AnyValue


def metadata_extension(type_url: str, fields: Mapping[str, Any], config: Message) -> AnyValue:
    """``fields`` and ``config`` (under ``Config``, in protobuf's JSON mapping) as one document."""
    document = {**fields, "Config": json_format.MessageToDict(config)}
    return AnyValue(type_url, json.dumps(document).encode())
