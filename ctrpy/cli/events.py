"""``ctrpy events [FILTER...]``: print the daemon's events as they happen, as ``ctr events`` does.

One line per event: ``<timestamp> <namespace> <topic> <event as JSON>``; with ``--format json``
one JSON object per line instead. Events from every namespace are shown (the daemon streams
them all). Payloads are decoded by their type URL, the bare full name of the message
(``containerd.events.TaskExit``), and written as Go's encoding/json writes containerd's
structs: proto field names, empty fields left out, times in RFC 3339, ``Any`` as
``{"type_url", "value"}``. Unlike ctr, which skips an event it cannot decode, an unknown type
is shown in that raw ``Any`` form.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from ctrpy import errors
from ctrpy.api.containerd.events import (
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    snapshot_pb2,
    task_pb2,
)
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.client import Client

from .common import verb


def _registry(*modules: ModuleType) -> dict[str, type[Message]]:
    found: dict[str, type[Message]] = {}
    for module in modules:
        for name in module.DESCRIPTOR.message_types_by_name:
            cls = getattr(module, name)
            found[cls.DESCRIPTOR.full_name] = cls
    return found


EVENT_TYPES = _registry(container_pb2, content_pb2, image_pb2, namespace_pb2, snapshot_pb2, task_pb2)


def type_name(value: any_pb2.Any) -> str:
    """The message name an ``Any`` carries: containerd's URLs are bare full names, Google's
    carry a ``type.googleapis.com/`` prefix; both end in the name."""
    return value.type_url.rsplit("/", 1)[-1]


def unpack(value: any_pb2.Any, types: dict[str, type[Message]]) -> Message | None:
    """The message inside ``value`` when its type is one of ``types``, else None."""
    cls = types.get(type_name(value))
    if cls is None:
        return None
    message = cls()
    try:
        message.ParseFromString(value.value)
    except DecodeError:
        return None
    return message


def rfc3339(stamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp as Go's RFC3339Nano: UTC ``Z``, fractional seconds without trailing zeros."""
    moment = datetime.fromtimestamp(stamp.seconds, UTC)
    fraction = f"{stamp.nanos:09d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def go_time(stamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp as Go's ``time.Time.String()`` prints it in UTC (ctr's first column)."""
    moment = datetime.fromtimestamp(stamp.seconds, UTC)
    fraction = f"{stamp.nanos:09d}".rstrip("0")
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + " +0000 UTC"


def any_json(value: any_pb2.Any) -> dict[str, str]:
    out = {}
    if value.type_url:
        out["type_url"] = value.type_url
    if value.value:
        out["value"] = base64.b64encode(value.value).decode("ascii")
    return out


def _single(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return rfc3339(value)
        if name == "google.protobuf.Any":
            return any_json(value)
        return message_json(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode("ascii")
    return value


def message_json(message: Message) -> dict[str, Any]:
    """A message as Go's encoding/json writes containerd's generated structs."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value_field = entry.fields_by_name["value"]
            out[field.name] = {key: _single(value_field, item) for key, item in value.items()}
        elif field.is_repeated:
            out[field.name] = [_single(field, item) for item in value]
        else:
            out[field.name] = _single(field, value)
    return out


def event_json(value: any_pb2.Any) -> dict[str, Any]:
    """An event payload as JSON data (the raw ``Any`` form when its type is unknown)."""
    message = unpack(value, EVENT_TYPES)
    return message_json(message) if message is not None else any_json(value)


def _line(envelope: events_pb2.Envelope, as_json: bool) -> str:
    event = event_json(envelope.event) if envelope.HasField("event") else None
    if as_json:
        return json.dumps({"timestamp": rfc3339(envelope.timestamp), "namespace": envelope.namespace,
                           "topic": envelope.topic, "type": envelope.event.type_url, "event": event},
                          separators=(",", ":"), sort_keys=False)
    payload = json.dumps(event, separators=(",", ":")) if event is not None else ""
    return f"{go_time(envelope.timestamp)} {envelope.namespace} {envelope.topic} {payload}"


def events(client: Client, args: argparse.Namespace) -> int:
    # The stream lasts until interrupted: never a deadline.
    call = client.events.Subscribe(events_pb2.SubscribeRequest(filters=args.filters), metadata=client.metadata)
    try:
        for envelope in call:
            sys.stdout.write(_line(envelope, args.format == "json") + "\n")
            sys.stdout.flush()
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED:
            return 0
        raise errors.from_grpc(exc) from None
    except BrokenPipeError:
        return 0
    finally:
        call.cancel()
    return 0


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = verb(nouns, "events", "print events as they happen", events, aliases=["event"])
    parser.add_argument("filters", nargs="*", metavar="FILTER",
                        help='e.g. topic=="/tasks/exit" or namespace==default')
