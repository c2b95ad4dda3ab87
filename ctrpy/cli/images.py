"""``ctrpy images ls|rm``."""

from __future__ import annotations

import argparse
import sys

from ctrpy.api.containerd.services.images.v1 import images_pb2 as api
from ctrpy.client import Client
from ctrpy.errors import NotFound

from . import output
from .common import verb, verbs


def ls(client: Client, args: argparse.Namespace) -> int:
    found = client.call(client.images.List, api.ListImagesRequest(filters=args.filters)).images
    if args.quiet:
        for image in found:
            print(image.name)
    elif args.format == "json":
        output.emit_json(list(found))
    else:
        output.table(
            ("REF", "TYPE", "DIGEST", "LABELS"),
            [(i.name, i.target.media_type, i.target.digest, output.labels_text(i.labels)) for i in found],
        )
    return 0


def rm(client: Client, args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        try:
            client.call(client.images.Delete, api.DeleteImageRequest(name=name, sync=args.sync))
        except NotFound:
            print(f"ctrpy: image {name!r} not found", file=sys.stderr)
            continue
        except Exception as exc:
            print(f"ctrpy: unable to delete {name}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(name)
    return status


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "images", "manage images", aliases=["image", "i"])
    parser = verb(group, "ls", "list images", ls, aliases=["list"])
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("filters", nargs="*")
    parser = verb(group, "rm", "remove images", rm, aliases=["remove"])
    parser.add_argument("--sync", action="store_true", help="collect garbage before returning")
    parser.add_argument("names", nargs="+")
