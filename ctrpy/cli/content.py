"""``ctrpy content ls|get|rm|label|ingest|active``: blobs in the content store."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from ctrpy.client import Client
from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.images import content
from ctrpy.images.model import validate_digest

from . import output
from .common import parse_labels, verb, verbs
from .progress import human_duration, human_size


def _age(when: datetime | None) -> str:
    return human_duration((datetime.now(UTC) - when).total_seconds()) if when else "-"


def _stamp(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def info_dict(item: content.ContentInfo) -> dict[str, Any]:
    return {"digest": item.digest, "size": item.size, "labels": dict(item.labels),
            "created_at": _stamp(item.created_at), "updated_at": _stamp(item.updated_at)}


def ls(client: Client, args: argparse.Namespace) -> int:
    found = list(content.list_content(client, args.filters))
    if args.quiet:
        for item in found:
            print(item.digest)
    elif args.format == "json":
        output.emit_json([info_dict(item) for item in found])
    else:
        output.table(("DIGEST", "SIZE", "AGE", "LABELS"),
                     [(i.digest, human_size(i.size), _age(i.created_at), output.labels_text(i.labels)) for i in found])
    return 0


def get(client: Client, args: argparse.Namespace) -> int:
    digest = validate_digest(args.digest)
    out = sys.stdout.buffer
    for chunk in content.iter_blob(client, digest):
        out.write(chunk)
    out.flush()
    return 0


def rm(client: Client, args: argparse.Namespace) -> int:
    status = 0
    for digest in args.digests:
        try:
            content.delete(client, validate_digest(digest))
        except NotFound:
            continue  # like ctr: already gone is fine, and not printed
        except Exception as exc:
            print(f"ctrpy: could not delete {digest}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(digest)
    return status


def label(client: Client, args: argparse.Namespace) -> int:
    digest = validate_digest(args.digest)
    labels = parse_labels(args.labels)
    item = content.update_labels(client, digest, labels) if labels else content.info(client, digest)
    if args.format == "json":
        output.emit_json(info_dict(item))
    else:
        print(",".join(f"{k}={v}" for k, v in sorted(item.labels.items())))
    return 0


def ingest(client: Client, args: argparse.Namespace) -> int:
    expected = validate_digest(args.expected_digest) if args.expected_digest else ""
    if args.expected_size < 0:
        raise InvalidArgument("--expected-size must not be negative")
    written = content.write_blob(client, args.ref, sys.stdin.buffer, args.expected_size, expected)
    if args.format == "json":
        output.emit_json({"digest": written.digest, "size": written.size, "existed": written.existed})
    else:
        print(written.digest)
    return 0


def active(client: Client, args: argparse.Namespace) -> int:
    statuses = content.list_statuses(client, [args.match] if args.match else [""])
    if args.format == "json":
        output.emit_json([{"ref": s.ref, "offset": s.offset, "total": s.total, "expected": s.expected,
                           "started_at": _stamp(s.started_at), "updated_at": _stamp(s.updated_at)}
                          for s in statuses])
    else:
        output.table(("REF", "SIZE", "AGE"), [(s.ref, human_size(s.offset), _age(s.started_at)) for s in statuses])
    return 0


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "content", "manage content (blobs)")
    parser = verb(group, "ls", "list blobs", ls, aliases=["list"])
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the digests")
    parser.add_argument("filters", nargs="*")
    verb(group, "get", "write a blob to stdout", get).add_argument("digest", metavar="DIGEST")
    verb(group, "rm", "delete blobs", rm, aliases=["remove", "delete", "del"]).add_argument(
        "digests", nargs="+", metavar="DIGEST")
    parser = verb(group, "label", "set or clear labels of a blob (KEY= clears)", label)
    parser.add_argument("digest", metavar="DIGEST")
    parser.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    parser = verb(group, "ingest", "store stdin as a blob through the ingest REF; prints its digest", ingest)
    parser.add_argument("ref", metavar="REF")
    parser.add_argument("--expected-size", type=int, default=0, help="refuse data of another size")
    parser.add_argument("--expected-digest", default="", help="refuse data with another digest")
    parser = verb(group, "active", "list ingests in progress", active)
    parser.add_argument("match", nargs="?", default="", metavar="FILTER")
