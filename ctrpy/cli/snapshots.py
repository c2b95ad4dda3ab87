"""``ctrpy snapshots ls|tree|info|usage|prepare|view|mounts|commit|rm|label|diff``.

As with ctr, these commands name the snapshotter directly (``--snapshotter``, else
``$CTRPY_SNAPSHOTTER``, else ``overlayfs``); they do not consult the namespace's default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from ctrpy.api.containerd.services.diff.v1 import diff_pb2
from ctrpy.client import Client
from ctrpy.errors import CtrpyError
from ctrpy.images import content, mediatypes, snapshots
from ctrpy.images.convert import descriptor_from_proto, mount_to_proto
from ctrpy.images.snapshots import GC_ROOT, SnapshotInfo
from ctrpy.images.unpack import DEFAULT_SNAPSHOTTER
from ctrpy.mount import Mount

from . import output
from .common import parse_labels, verb
from .progress import human_bytes


def _snapshotter(args: argparse.Namespace) -> str:
    return getattr(args, "snapshotter", None) or os.environ.get("CTRPY_SNAPSHOTTER") or DEFAULT_SNAPSHOTTER


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def info_dict(info: SnapshotInfo) -> dict[str, Any]:
    """A snapshot as ctr's ``snapshots info`` prints it."""
    data: dict[str, Any] = {"Kind": info.kind, "Name": info.name}
    if info.parent:
        data["Parent"] = info.parent
    if info.labels:
        data["Labels"] = dict(info.labels)
    data["Created"] = info.created_at.isoformat() if info.created_at else None
    data["Updated"] = info.updated_at.isoformat() if info.updated_at else None
    return data


def _print_mounts(target: str, mounts: list[Mount]) -> None:
    for m in mounts:
        print(f"mount -t {m.type} {m.source} {target} -o {','.join(m.options)}")


def _mounts_json(mounts: list[Mount]) -> list[dict[str, Any]]:
    return [{"type": m.type, "source": m.source, "target": m.target, "options": list(m.options)} for m in mounts]


def ls(client: Client, args: argparse.Namespace) -> int:
    found = list(snapshots.list_snapshots(client, _snapshotter(args), args.filters))
    if args.format == "json":
        output.emit_json([info_dict(i) for i in found])
    else:
        output.table(("KEY", "PARENT", "KIND"), [(i.name, i.parent, i.kind) for i in found])
    return 0


def tree(client: Client, args: argparse.Namespace) -> int:
    found = list(snapshots.list_snapshots(client, _snapshotter(args)))
    names = {i.name for i in found}
    kids: dict[str, list[str]] = {}
    roots: list[str] = []
    for info in found:
        if info.parent:
            kids.setdefault(info.parent, []).append(info.name)
            if info.parent not in names and info.parent not in roots:
                roots.append(info.parent)  # a parent we cannot see: show it as a root
        else:
            roots.append(info.name)

    def show(name: str, level: int) -> None:
        prefix = "  " * level + ("\\_" if level else "")
        print(f"{prefix} {name}")
        for child in kids.get(name, []):
            show(child, level + 1)

    for root in roots:
        show(root, 0)
    return 0


def info(client: Client, args: argparse.Namespace) -> int:
    json.dump(info_dict(snapshots.stat(client, _snapshotter(args), args.key)), sys.stdout, indent=4)
    sys.stdout.write("\n")
    return 0


def usage(client: Client, args: argparse.Namespace) -> int:
    name = _snapshotter(args)
    keys = args.keys or [i.name for i in snapshots.list_snapshots(client, name)]
    rows, data = [], []
    for key in keys:
        used = snapshots.usage(client, name, key)
        rows.append((key, str(used.size) if args.bytes else human_bytes(used.size), str(used.inodes)))
        data.append({"key": key, "size": used.size, "inodes": used.inodes})
    if args.format == "json":
        output.emit_json(data)
    else:
        output.table(("KEY", "SIZE", "INODES"), rows)
    return 0


def _made(args: argparse.Namespace, mounts: list[Mount]) -> int:
    if args.target:
        _print_mounts(args.target, mounts)
    if args.mounts or args.format == "json":
        output.emit_json(_mounts_json(mounts))
    return 0


def prepare(client: Client, args: argparse.Namespace) -> int:
    mounts = snapshots.prepare(client, _snapshotter(args), args.key, args.parent, {GC_ROOT: _now()})
    return _made(args, mounts)


def view(client: Client, args: argparse.Namespace) -> int:
    return _made(args, snapshots.view(client, _snapshotter(args), args.key, args.parent))


def mounts(client: Client, args: argparse.Namespace) -> int:
    found = snapshots.mounts(client, _snapshotter(args), args.key)
    if args.format == "json":
        output.emit_json(_mounts_json(found))
    else:
        _print_mounts(args.target, found)
    return 0


def commit(client: Client, args: argparse.Namespace) -> int:
    snapshots.commit(client, _snapshotter(args), args.name, args.key, {GC_ROOT: _now()})
    return 0


def rm(client: Client, args: argparse.Namespace) -> int:
    name = _snapshotter(args)
    for key in args.keys:
        try:
            snapshots.remove(client, name, key)
        except CtrpyError as exc:
            print(f"ctrpy: failed to remove {key!r}: {exc.message}", file=sys.stderr)
            return 1
    return 0


def label(client: Client, args: argparse.Namespace) -> int:
    name = _snapshotter(args)
    labels = parse_labels(args.labels)
    found = snapshots.update_labels(client, name, args.key, labels) if labels else snapshots.stat(client, name, args.key)
    if args.format == "json":
        output.emit_json(dict(found.labels))
    else:
        print(",".join(f"{k}={v}" for k, v in sorted(found.labels.items())))
    return 0


def _mounts_of(client: Client, name: str, key: str, unique: str, cleanup: list[str]) -> list[Mount]:
    """Mounts for ``key``: its own if active, else those of a temporary view (to be removed)."""
    found = snapshots.stat(client, name, key)
    if found.kind == "Active":
        return snapshots.mounts(client, name, key)
    view_key = f"{key}-view-{unique}"
    made = snapshots.view(client, name, view_key, key)
    cleanup.append(view_key)
    return made


def diff(client: Client, args: argparse.Namespace) -> int:
    """The changes of a snapshot over its parent (or over a second snapshot), written into the
    content store by the Diff service; prints the blob's digest."""
    name = _snapshotter(args)
    labels = parse_labels(args.label)
    if args.keep:
        labels[GC_ROOT] = _now()
    unique = f"{datetime.now(UTC).microsecond}-{os.getpid()}"
    cleanup: list[str] = []
    with client.lease():
        try:
            if args.other:
                lower = _mounts_of(client, name, args.key, unique, cleanup)
                upper = _mounts_of(client, name, args.other, unique, cleanup)
            else:
                found = snapshots.stat(client, name, args.key)
                parent_key = f"{found.parent}-parent-view-{unique}"
                lower = snapshots.view(client, name, parent_key, found.parent)
                cleanup.append(parent_key)
                upper = _mounts_of(client, name, args.key, unique, cleanup)
            request = diff_pb2.DiffRequest(
                left=[mount_to_proto(m) for m in lower], right=[mount_to_proto(m) for m in upper],
                media_type=args.media_type, ref=args.ref, labels=labels)
            desc = descriptor_from_proto(client.call(client.diff.Diff, request).diff)
        finally:
            for key in reversed(cleanup):
                try:
                    snapshots.remove(client, name, key)
                except CtrpyError:
                    pass
        if args.output:
            out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
            try:
                for chunk in content.iter_blob(client, desc.digest, desc.size):
                    out.write(chunk)
            finally:
                if out is not sys.stdout.buffer:
                    out.close()
    if args.output == "-":
        return 0
    if args.format == "json":
        output.emit_json({"media_type": desc.media_type, "digest": desc.digest, "size": desc.size})
    else:
        print(desc.digest)
    return 0


def _with_snapshotter(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("--snapshotter", default=default,
                        help="snapshotter name (env CTRPY_SNAPSHOTTER, default overlayfs)")


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    noun = nouns.add_parser("snapshots", help="manage snapshots", aliases=["snapshot"])
    # Accepted before the verb (as ctr does) and after it.
    _with_snapshotter(noun)
    group = noun.add_subparsers(dest="verb", metavar="VERB", required=True)

    def add(name: str, help_text: str, run: Any, aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        parser = verb(group, name, help_text, run, aliases)
        _with_snapshotter(parser, argparse.SUPPRESS)
        return parser

    add("ls", "list snapshots", ls, ("list",)).add_argument("filters", nargs="*")
    add("tree", "show snapshots as a tree of parents and children", tree)
    add("info", "show one snapshot", info).add_argument("key", metavar="KEY")
    parser = add("usage", "disk usage of snapshots", usage)
    parser.add_argument("keys", nargs="*", metavar="KEY")
    parser.add_argument("-b", dest="bytes", action="store_true", help="sizes in bytes")
    for name, run, help_text in (("prepare", prepare, "create an active snapshot on a committed parent"),
                                 ("view", view, "create a read-only view of a committed snapshot")):
        parser = add(name, help_text, run)
        parser.add_argument("key", metavar="KEY")
        parser.add_argument("parent", nargs="?", default="", metavar="PARENT")
        parser.add_argument("--target", "-t", default="", help="print mount commands for this target")
        parser.add_argument("--mounts", action="store_true", help="print the mounts as JSON")
    parser = add("mounts", "print the mount commands for a snapshot", mounts, ("mount", "m"))
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("key", metavar="KEY")
    parser = add("commit", "commit an active snapshot under a name", commit)
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("key", metavar="KEY")
    add("rm", "remove snapshots", rm, ("remove", "delete", "del")).add_argument("keys", nargs="+", metavar="KEY")
    parser = add("label", "set or clear labels of a snapshot (KEY= clears)", label)
    parser.add_argument("key", metavar="KEY")
    parser.add_argument("labels", nargs="*", metavar="LABEL=VALUE")
    parser = add("diff", "store the changes of a snapshot as a layer blob; prints its digest", diff)
    parser.add_argument("key", metavar="KEY")
    parser.add_argument("other", nargs="?", default="", metavar="KEY2", help="compare with this snapshot instead of the parent")
    parser.add_argument("--media-type", default=mediatypes.OCI_LAYER_GZIP, help="media type of the diff")
    parser.add_argument("--ref", default="", help="content ingest reference to use")
    parser.add_argument("--keep", action="store_true",
                        help="label the blob as a GC root (otherwise the daemon may collect it once the command ends)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="labels for the blob")
    parser.add_argument("--output", "-o", default="", metavar="FILE", help="also write the blob here (- for stdout)")
