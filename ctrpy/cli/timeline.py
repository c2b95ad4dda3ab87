"""``ctrpy tasks timeline ID`` and ``ctrpy cri timeline CONTAINER|POD``: where a start went.

Both ask ctrpyd's own ``/ctrpy.timeline.v1.Timeline/Get`` (ctrpy.manager.services.timeline;
request and answer are ``google.protobuf.Struct``) and print the steps in order with their
offsets and durations; the rows add up to the total. ``--format json`` prints the answer.
"""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import json_format, struct_pb2

from ctrpy import errors
from ctrpy.client import Client
from ctrpy.cri import CriClient

from . import output

METHOD = "/ctrpy.timeline.v1.Timeline/Get"
CRI_NAMESPACE = "k8s.io"


def fetch(client: Client, kind: str, object_id: str) -> dict[str, Any]:
    """The daemon's timeline answer as a dict; says so in words when the daemon has none."""
    get = client.channel.unary_unary(METHOD, request_serializer=struct_pb2.Struct.SerializeToString,
                                     response_deserializer=struct_pb2.Struct.FromString)
    request = struct_pb2.Struct()
    request.update({"kind": kind, "id": object_id})
    try:
        answer: struct_pb2.Struct = client.call(get, request)
    except errors.NotImplemented:
        raise errors.FailedPrecondition("the daemon keeps no start-up timelines (is it containerd?)") from None
    return json_format.MessageToDict(answer)


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _print_task(timeline: dict[str, Any]) -> None:
    rows = [(r["step"], r["source"] or "-", _ms(r["offset_ms"]), _ms(r["ms"])) for r in timeline["steps"]]
    output.table(("STEP", "MEASURED BY", "AT (ms)", "TOOK (ms)"), rows)
    exited = "" if timeline.get("exited") else " (no exit event yet)"
    print(f"total {_ms(timeline['total_ms'])} ms from {timeline['started_at']}{exited}")


def task_timeline(client: Client, args: argparse.Namespace) -> int:
    timeline = fetch(client, "task", args.id)
    if args.format == "json":
        output.emit_json(timeline)
    else:
        _print_task(timeline)
    return 0


def cri_timeline(cri: CriClient, args: argparse.Namespace) -> int:
    """``ctrpy cri timeline``: the CRI calls' steps, then the task's timeline."""
    with Client(cri.address, CRI_NAMESPACE, cri.timeout) as client:
        answer = fetch(client, "cri", args.id)
    if args.format == "json":
        output.emit_json(answer)
        return 0
    for call in answer.get("calls", []):
        print(f"{call['call']} {answer['id']}: {_ms(call['total_ms'])} ms")
        output.table(("STEP", "TOOK (ms)"), [
            (s["step"] + (" (beside the others)" if s.get("beside") else ""), _ms(s["ms"])) for s in call["steps"]])
        print()
    task = answer.get("task")
    if task:
        print(f"task {answer['id']} (namespace {CRI_NAMESPACE}):")
        _print_task(task)
    return 0


def add_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("id", metavar="ID", help="container or pod id (or a unique prefix)")


def add_task_verb(group: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``tasks timeline``, registered by ctrpy.cli.tasks."""
    parser = group.add_parser("timeline", help="where a task's start went, step by step")
    parser.set_defaults(run=task_timeline)
    parser.add_argument("id", metavar="CONTAINER")
