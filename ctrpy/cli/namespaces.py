"""``ctrpy namespaces ls|create|label|rm``."""

from __future__ import annotations

import argparse
import sys

from google.protobuf import field_mask_pb2

from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2 as api
from ctrpy.client import Client
from ctrpy.errors import NotFound

from . import output
from .common import parse_labels, verb, verbs


def ls(client: Client, args: argparse.Namespace) -> int:
    found = client.call(client.namespaces.List, api.ListNamespacesRequest()).namespaces
    if args.quiet:
        for ns in found:
            print(ns.name)
    elif args.format == "json":
        output.emit_json(list(found))
    else:
        output.table(("NAME", "LABELS"), [(ns.name, output.labels_text(ns.labels)) for ns in found])
    return 0


def create(client: Client, args: argparse.Namespace) -> int:
    namespace = api.Namespace(name=args.name, labels=parse_labels(args.labels))
    client.call(client.namespaces.Create, api.CreateNamespaceRequest(namespace=namespace))
    return 0


def label(client: Client, args: argparse.Namespace) -> int:
    labels = parse_labels(args.labels)
    namespace = api.Namespace(name=args.name, labels={k: v for k, v in labels.items() if v})
    mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
    client.call(client.namespaces.Update, api.UpdateNamespaceRequest(namespace=namespace, update_mask=mask))
    return 0


def rm(client: Client, args: argparse.Namespace) -> int:
    status = 0
    for name in args.names:
        try:
            client.call(client.namespaces.Delete, api.DeleteNamespaceRequest(name=name))
        except NotFound:
            pass  # like ctr: removing what is not there is not an error
        except Exception as exc:
            print(f"ctrpy: unable to delete {name}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(name)
    return status


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "namespaces", "manage namespaces", aliases=["namespace", "ns"])
    verb(group, "ls", "list namespaces", ls, aliases=["list"]).add_argument("-q", "--quiet", action="store_true")
    parser = verb(group, "create", "create a namespace", create)
    parser.add_argument("name")
    parser.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    parser = verb(group, "label", "set or clear labels (KEY= clears)", label)
    parser.add_argument("name")
    parser.add_argument("labels", nargs="+", metavar="KEY=VALUE")
    verb(group, "rm", "remove namespaces", rm, aliases=["remove"]).add_argument("names", nargs="+")
