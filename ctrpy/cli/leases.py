"""``ctrpy leases ls|create|rm``."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta

from ctrpy.api.containerd.services.leases.v1 import leases_pb2 as api
from ctrpy.client import Client
from ctrpy.errors import InvalidArgument

from . import output
from .common import parse_labels, verb, verbs

EXPIRE_LABEL = "containerd.io/gc.expire"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``24h``, ``2d``, or a combination like ``1h30m``; ``0`` means none."""
    if text == "0":
        return timedelta(0)
    total, number = 0.0, ""
    for char in text:
        if char.isdigit() or char == ".":
            number += char
        elif char in _UNITS and number:
            total += float(number) * _UNITS[char]
            number = ""
        else:
            raise InvalidArgument(f"duration {text!r}: use a number with s, m, h or d")
    if number:
        raise InvalidArgument(f"duration {text!r}: missing unit")
    return timedelta(seconds=total)


def ls(client: Client, args: argparse.Namespace) -> int:
    found = client.call(client.leases.List, api.ListRequest(filters=args.filters)).leases
    if args.quiet:
        for lease in found:
            print(lease.id)
    elif args.format == "json":
        output.emit_json(list(found))
    else:
        output.table(
            ("ID", "CREATED AT", "LABELS"),
            [(lease.id, output.timestamp_text(lease, "created_at"), output.labels_text(lease.labels)) for lease in found],
        )
    return 0


def create(client: Client, args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    expires = parse_duration(args.expires)
    if expires:
        labels[EXPIRE_LABEL] = (datetime.now(UTC) + expires).strftime("%Y-%m-%dT%H:%M:%SZ")
    lease = client.call(client.leases.Create, api.CreateRequest(id=args.id, labels=labels)).lease
    print(lease.id)
    return 0


def rm(client: Client, args: argparse.Namespace) -> int:
    status = 0
    for lease_id in args.ids:
        try:
            client.call(client.leases.Delete, api.DeleteRequest(id=lease_id, sync=args.sync))
        except Exception as exc:
            print(f"ctrpy: unable to delete lease {lease_id}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(lease_id)
    return status


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "leases", "manage leases", aliases=["lease"])
    parser = verb(group, "ls", "list leases", ls, aliases=["list"])
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("filters", nargs="*")
    parser = verb(group, "create", "create a lease", create)
    parser.add_argument("--id", default="", help="lease id (the server makes one when absent)")
    parser.add_argument("--expires", "-x", default="24h", help="expire after this long (0: never)")
    parser.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    parser = verb(group, "rm", "remove leases", rm, aliases=["remove"])
    parser.add_argument("--sync", action="store_true", help="collect garbage before returning")
    parser.add_argument("ids", nargs="+")
