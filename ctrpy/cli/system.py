"""``ctrpy version`` and ``ctrpy plugins``."""

from __future__ import annotations

import argparse

from google.protobuf import empty_pb2

from ctrpy import __version__
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2
from ctrpy.client import Client

from . import output
from .common import verb, verbs


def version(client: Client, args: argparse.Namespace) -> int:
    server = client.call(client.version.Version, empty_pb2.Empty())
    uuid = client.call(client.introspection.Server, empty_pb2.Empty()).uuid
    if args.format == "json":
        output.emit_json({"client": {"version": __version__},
                          "server": {"version": server.version, "revision": server.revision, "uuid": uuid}})
        return 0
    print(f"Client:\n  Version:  {__version__}\n")
    print(f"Server:\n  Version:  {server.version}\n  Revision: {server.revision}\n  UUID: {uuid}")
    return 0


def plugins_ls(client: Client, args: argparse.Namespace) -> int:
    response = client.call(client.introspection.Plugins, introspection_pb2.PluginsRequest(filters=args.filters))
    if args.format == "json":
        output.emit_json(list(response.plugins))
        return 0
    rows = []
    for plugin in response.plugins:
        platforms = ",".join(f"{p.os}/{p.architecture}" for p in plugin.platforms) or "-"
        status = "ok"
        if plugin.HasField("init_err"):
            status = "skip" if "skip plugin" in plugin.init_err.message else "error"
        rows.append((plugin.type, plugin.id, platforms, status))
    output.table(("TYPE", "ID", "PLATFORMS", "STATUS"), rows)
    return 0


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = nouns.add_parser("version", help="print the client and server versions")
    parser.set_defaults(run=version)
    group = verbs(nouns, "plugins", "what the daemon has loaded", aliases=["plugin"])
    verb(group, "ls", "list plugins", plugins_ls, aliases=["list"]).add_argument("filters", nargs="*")
