"""``ctrpy containers create|ls|info|label|rm``.

``create`` is the first half of ``run`` (the same flags, no task); ``rm`` deletes a container
whose task is stopped or only created (deleting that task first), and refuses one whose task
runs, as ``ctr containers rm`` does; the root filesystem snapshot goes too unless
``--keep-snapshot``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys

from google.protobuf import any_pb2, field_mask_pb2, json_format

from ctrpy import errors
from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as api
from ctrpy.api.containerd.types.task import task_pb2
from ctrpy.client import Client
from ctrpy.oci import create_container, delete_container, get_container

from . import output
from .common import parse_labels, verb, verbs
from .process import delete_task, get_process, status_name, warn
from .run import add_container_flags, container_config


def ls(client: Client, args: argparse.Namespace) -> int:
    found = client.call(client.containers.List, api.ListContainersRequest(filters=args.filters)).containers
    if args.quiet:
        for container in found:
            print(container.id)
    elif args.format == "json":
        output.emit_json([container_dict(c) for c in found])
    else:
        output.table(
            ("CONTAINER", "IMAGE", "RUNTIME"),
            [(c.id, c.image or "-", c.runtime.name) for c in found],
        )
    return 0


def _any_text(value: any_pb2.Any) -> dict[str, str]:
    return {"type_url": value.type_url, "value": base64.b64encode(value.value).decode("ascii")}


def container_dict(container: api.Container) -> dict[str, object]:
    """A container as JSON-ready data.

    Any payloads carry containerd's bare type URLs, which json_format cannot resolve: take
    them out, convert the rest, and put them back in a readable form.
    """
    plain = api.Container()
    plain.CopyFrom(container)
    plain.ClearField("spec")
    plain.ClearField("extensions")
    plain.runtime.ClearField("options")
    data = json_format.MessageToDict(plain, preserving_proto_field_name=True)
    if container.HasField("spec"):
        try:
            data["spec"] = json.loads(container.spec.value)  # the OCI spec is JSON, as ctr shows it
        except ValueError:
            data["spec"] = _any_text(container.spec)
    if container.runtime.HasField("options"):
        data.setdefault("runtime", {})["options"] = _any_text(container.runtime.options)
    if container.extensions:
        data["extensions"] = {k: _any_text(v) for k, v in container.extensions.items()}
    return data


def info(client: Client, args: argparse.Namespace) -> int:
    container = client.call(client.containers.Get, api.GetContainerRequest(id=args.id)).container
    json.dump(container_dict(container), sys.stdout, indent=4, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def label(client: Client, args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    container = api.Container(id=args.id, labels={k: v for k, v in labels.items() if v})
    mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
    updated = client.call(
        client.containers.Update, api.UpdateContainerRequest(container=container, update_mask=mask)
    ).container
    print(output.labels_text(updated.labels))
    return 0


def create(client: Client, args: argparse.Namespace) -> int:
    container = create_container(client, container_config(args))
    if args.format == "json":
        output.emit_json(container_dict(container))
    return 0


def remove(client: Client, container_id: str, keep_snapshot: bool) -> None:
    """Delete one container (and its stopped task); raises FailedPrecondition when it runs."""
    container = get_container(client, container_id)
    try:
        process = get_process(client, container_id)
    except errors.NotFound:
        pass
    else:
        if process.status not in (task_pb2.STOPPED, task_pb2.CREATED):
            raise errors.FailedPrecondition(
                f"cannot delete a non stopped container: {status_name(process.status).lower()}")
        if process.status == task_pb2.CREATED:
            # A task that was never started: it has a process waiting in runc; kill it first.
            delete_task(client, container_id, force=True)
        else:
            delete_task(client, container_id)
    delete_container(client, container, keep_snapshot=keep_snapshot)


def rm(client: Client, args: argparse.Namespace) -> int:
    status = 0
    for container_id in args.ids:
        try:
            remove(client, container_id, args.keep_snapshot)
        except errors.CtrpyError as exc:
            warn(f"failed to delete container {container_id!r}: {exc.message}")
            status = 1
    return status


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "containers", "manage containers", aliases=["container", "c"])
    parser = verb(group, "ls", "list containers", ls, aliases=["list"])
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("filters", nargs="*")
    verb(group, "info", "show a container's record", info).add_argument("id")
    parser = verb(group, "label", "set or clear labels (KEY= clears)", label)
    parser.add_argument("id")
    parser.add_argument("labels", nargs="+", metavar="KEY=VALUE")
    parser = verb(group, "create", "create a container from an image (no task)", create)
    add_container_flags(parser, cpu_shares_default=None)
    parser = verb(group, "rm", "remove containers and their snapshots", rm, aliases=["remove", "delete", "del"])
    parser.add_argument("--keep-snapshot", action="store_true", help="do not remove the root filesystem snapshot")
    parser.add_argument("ids", nargs="+")
