"""``ctrpy images ls|rm|import|export|tag|check|unpack|mount|unmount``.

All image logic lives in :mod:`ctrpy.images` and goes through the API only, so these commands
behave the same against ctrpyd and containerd.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import sys
from collections.abc import Callable
from typing import Any, BinaryIO

from ctrpy import images as lib
from ctrpy.api.containerd.services.images.v1 import images_pb2 as api
from ctrpy.client import Client
from ctrpy.errors import CtrpyError, InvalidArgument, NotFound
from ctrpy.images import platforms, store, transfer
from ctrpy.images.model import Descriptor, Image

from . import output
from .common import verb, verbs
from .progress import ImportProgress, human_bytes
from .pullprogress import PullProgress

Command = Callable[[Client, argparse.Namespace], int]


def os_errors(command: Command) -> Command:
    """Report a failure of the local system (a missing file, a refused mount) like ctr does:
    one line on stderr and exit status 1, not a traceback."""

    @functools.wraps(command)
    def run(client: Client, args: argparse.Namespace) -> int:
        try:
            return command(client, args)
        except OSError as exc:
            print(f"ctrpy: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"ctrpy: {exc}",
                  file=sys.stderr)
            return 1

    return run


def descriptor_dict(desc: Descriptor) -> dict[str, Any]:
    return {"media_type": desc.media_type, "digest": desc.digest, "size": desc.size,
            "annotations": dict(desc.annotations)}


def image_dict(image: Image) -> dict[str, Any]:
    """An image record as JSON-ready data."""
    return {
        "name": image.name,
        "target": descriptor_dict(image.target),
        "labels": dict(image.labels),
        "created_at": image.created_at.isoformat() if image.created_at else None,
        "updated_at": image.updated_at.isoformat() if image.updated_at else None,
    }


def _matcher(args: argparse.Namespace) -> platforms.Matcher | None:
    specs = getattr(args, "platform", None) or []
    if not specs:
        return None
    return platforms.ordered([platforms.parse(s) for s in specs])


def ls(client: Client, args: argparse.Namespace) -> int:
    found = store.list_images(client, args.filters)
    if args.quiet:
        for image in found:
            print(image.name)
        return 0
    rows, data = [], []
    host = platforms.default()
    for image in found:
        try:
            size: int | None = lib.image_size(client, image.target, host)
        except CtrpyError as exc:
            print(f"ctrpy: failed calculating size for image {image.name}: {exc.message}", file=sys.stderr)
            size = None
        try:
            names = sorted({str(p) for p in lib.platforms_of(client, image.target)})
        except CtrpyError as exc:
            print(f"ctrpy: failed resolving platform for image {image.name}: {exc.message}", file=sys.stderr)
            names = []
        rows.append((image.name, image.target.media_type, image.target.digest,
                     human_bytes(size) if size is not None else "-", ",".join(names) or "-",
                     output.labels_text(image.labels)))
        data.append({**image_dict(image), "size": size, "platforms": names})
    if args.format == "json":
        output.emit_json(data)
    else:
        output.table(("REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"), rows)
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


@os_errors
def import_(client: Client, args: argparse.Namespace) -> int:
    if args.skip_digest_for_named and not args.digests:
        raise InvalidArgument("--skip-digest-for-named must be specified with --digests option")
    source: str | BinaryIO = sys.stdin.buffer if args.file == "-" else args.file
    reporter = ImportProgress(quiet=args.format == "json")
    try:
        imported = lib.import_archive(
            client, source, base_name=args.base_name, index_name=args.index_name, digests=args.digests,
            skip_digest_for_named=args.skip_digest_for_named, all_platforms=args.all_platforms,
            platform=_matcher(args), unpack_images=not args.no_unpack, snapshotter=args.snapshotter,
            reporter=reporter)
    finally:
        reporter.close()
    if args.format == "json":
        output.emit_json([image_dict(image) for image in imported])
    return 0


@os_errors
def export(client: Client, args: argparse.Namespace) -> int:
    matcher = _matcher(args)
    out: str | BinaryIO = sys.stdout.buffer if args.out == "-" else args.out
    lib.export(client, args.refs, out, matcher=matcher, all_platforms=args.all_platforms,
               docker_manifest=not args.skip_manifest_json)
    return 0


def tag(client: Client, args: argparse.Namespace) -> int:
    for image in lib.tag(client, args.source, args.targets, force=args.force):
        print(image.name)
    return 0


def check(client: Client, args: argparse.Namespace) -> int:
    status = 0
    rows, data = [], []
    host = platforms.default()
    for image in store.list_images(client, args.filters):
        state, size, complete = "complete", "-", True
        try:
            result = lib.check(client, image.target, host)
        except CtrpyError as exc:
            print(f"ctrpy: unable to check {image.name}: {exc.message}", file=sys.stderr)
            state, complete, status = "error", False, 1
        else:
            required = sum(d.size for d in result.required)
            present = sum(d.size for d in result.present)
            if result.missing:
                state, complete = "incomplete", False
            if result.available:
                state += f" ({len(result.present)}/{len(result.required)})"
                size = f"{human_bytes(present)}/{human_bytes(required)}"
            else:
                state, complete = f"unavailable ({len(result.present)}/?)", False
                size = f"{human_bytes(present)}/?"
        try:
            unpacked = lib.is_unpacked(client, image, args.snapshotter, host)
        except CtrpyError as exc:
            print(f"ctrpy: unable to check unpack for {image.name}: {exc.message}", file=sys.stderr)
            unpacked, status = False, 1
        if args.quiet:
            if complete:
                print(image.name)
            continue
        rows.append((image.name, image.target.media_type, image.target.digest, state, size,
                     str(unpacked).lower()))
        data.append({"name": image.name, "target": descriptor_dict(image.target), "status": state,
                     "complete": complete, "size": size, "unpacked": unpacked})
    if args.quiet:
        return status
    if args.format == "json":
        output.emit_json(data)
    elif rows:
        output.table(("REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"), rows)
    return status


def unpack(client: Client, args: argparse.Namespace) -> int:
    image = store.get(client, args.ref)
    print(f"unpacking {image.name} ({image.target.digest})...", end="", flush=True)
    try:
        chain = lib.unpack(client, image, args.snapshotter, _matcher(args))
    except BaseException:
        print()
        raise
    print("done")
    if args.format == "json":
        output.emit_json({"name": image.name, "chain_id": chain})
    return 0


@os_errors
def mount(client: Client, args: argparse.Namespace) -> int:
    chain = lib.mount(client, args.ref, args.target, rw=args.rw, snapshotter=args.snapshotter, matcher=_matcher(args))
    print(chain)
    print(args.target)
    return 0


@os_errors
def unmount(client: Client, args: argparse.Namespace) -> int:
    lib.unmount(client, args.target, remove=args.rm, snapshotter=args.snapshotter)
    print(args.target)
    return 0


def pull(client: Client, args: argparse.Namespace) -> int:
    """``ctrpy images pull REF``: the daemon pulls (Transfer service), ctr 2.x's default."""
    if args.platform and args.all_platforms:
        raise InvalidArgument("cannot specify both --platform and --all-platforms")
    chosen = transfer.platforms_to_pull([platforms.parse(p) for p in args.platform], args.all_platforms,
                                        platforms.default_spec())
    options = transfer.PullOptions(
        platforms=chosen.platforms, unpack=chosen.unpack, snapshotter=args.snapshotter or "",
        plain_http=args.plain_http, hosts_dir=args.hosts_dir, user=_user(args.user),
    )  # fmt: skip
    progress = PullProgress(quiet=args.format == "json")
    try:
        if args.local:
            from .localpull import pull_local  # lazily: httpx is needed only here

            pull_local(client, args.ref, options, progress)
        else:
            transfer.pull(client, args.ref, options, progress)
    finally:
        progress.close()
    image = store.get(client, args.ref)
    if args.format == "json":
        output.emit_json(image_dict(image))
    else:
        print(f"{image.name}: {image.target.digest}")
    return 0


def push(client: Client, args: argparse.Namespace) -> int:
    """``ctrpy images push REF [LOCAL]``: the daemon pushes its image LOCAL (default REF) to REF."""
    options = transfer.PullOptions(
        platforms=tuple(platforms.parse(p) for p in args.platform), plain_http=args.plain_http,
        hosts_dir=args.hosts_dir, user=_user(args.user),
    )  # fmt: skip
    progress = PullProgress(quiet=args.format == "json")
    try:
        transfer.push(client, args.ref, options, progress, name=args.local_ref or args.ref)
    finally:
        progress.close()
    if args.format == "json":
        output.emit_json({"name": args.local_ref or args.ref, "pushed": args.ref})
    return 0


def _user(user: str | None) -> str:
    """``--user``: ``USER:PASSWORD`` as given; ``USER`` alone asks for the password on a
    terminal, as ctr does (and means an empty one elsewhere)."""
    if not user or ":" in user or not sys.stdin.isatty():
        return user or ""
    return f"{user}:{getpass.getpass('Password: ')}"


def _registry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plain-http", action="store_true", help="plain HTTP for hosts without configuration")
    parser.add_argument("--user", "-u", default=None, metavar="USER[:PASSWORD]", help="registry credentials")
    parser.add_argument("--hosts-dir", default="", metavar="DIR",
                        help="registry host configuration (<host>/hosts.toml), read by the daemon")


def _snapshotter(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--snapshotter", default=None,
                        help="snapshotter name (env CTRPY_SNAPSHOTTER, else the namespace default, else overlayfs)")


def _platform(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]", help=help_text)


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "images", "manage images", aliases=["image", "i"])
    parser = verb(group, "ls", "list images", ls, aliases=["list"])
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image names")
    parser.add_argument("filters", nargs="*")
    parser = verb(group, "rm", "remove images", rm, aliases=["remove", "delete", "del"])
    parser.add_argument("--sync", action="store_true", help="collect garbage before returning")
    parser.add_argument("names", nargs="+")

    parser = verb(group, "import", "import images from an OCI layout or docker-save tar", import_)
    parser.add_argument("file", metavar="FILE", help="the archive, or - for stdin")
    parser.add_argument("--base-name", default="",
                        help="name for entries that carry only a tag; keeps only images under this name")
    parser.add_argument("--index-name", default="", help="also keep the index under this image name")
    parser.add_argument("--digests", action="store_true", help="also create <base-name>@<digest> images")
    parser.add_argument("--skip-digest-for-named", action="store_true",
                        help="with --digests: no digest image for entries that have a name")
    parser.add_argument("--all-platforms", action="store_true", help="import content for every platform")
    _platform(parser, "import content for this platform (default: the host's)")
    parser.add_argument("--no-unpack", action="store_true", help="do not unpack the images")
    _snapshotter(parser)

    parser = verb(group, "pull", "pull an image from a registry (the daemon does it)", pull)
    parser.add_argument("ref", metavar="REF", help="a full reference, e.g. docker.io/library/busybox:latest")
    _registry_flags(parser)
    parser.add_argument("--all-platforms", action="store_true", help="pull every platform of an index")
    _platform(parser, "pull this platform of an index (default: the host's)")
    parser.add_argument("--local", action="store_true",
                        help="pull in the client, as ctr 1.6 does (for daemons without the Transfer service)")
    _snapshotter(parser)

    parser = verb(group, "push", "push an image to a registry (the daemon does it)", push)
    parser.add_argument("ref", metavar="REF", help="where to push, e.g. registry.example/app:1")
    parser.add_argument("local_ref", metavar="LOCAL", nargs="?", default="", help="the image to push (default: REF)")
    _registry_flags(parser)
    _platform(parser, "push only this platform of an index (default: every platform held)")

    parser = verb(group, "export", "export images as an OCI layout tar", export)
    parser.add_argument("out", metavar="OUT", help="the tar to write, or - for stdout")
    parser.add_argument("refs", nargs="+", metavar="REF")
    parser.add_argument("--all-platforms", action="store_true", help="export every platform of an index")
    _platform(parser, "export this platform of an index (default: the host's)")
    parser.add_argument("--skip-manifest-json", action="store_true", help="leave out Docker's manifest.json")

    parser = verb(group, "tag", "give an image more names", tag)
    parser.add_argument("source", metavar="SRC")
    parser.add_argument("targets", nargs="+", metavar="DST")
    parser.add_argument("--force", action="store_true", help="replace existing images of those names")

    parser = verb(group, "check", "check that images are complete and unpacked", check)
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the names of complete images")
    parser.add_argument("filters", nargs="*")
    _snapshotter(parser)

    parser = verb(group, "unpack", "unpack an image into a snapshotter", unpack)
    parser.add_argument("ref", metavar="REF")
    _platform(parser, "unpack this platform of an index (default: the host's)")
    _snapshotter(parser)

    parser = verb(group, "mount", "mount an image's root filesystem on a directory", mount)
    parser.add_argument("ref", metavar="REF")
    parser.add_argument("target", metavar="DIR")
    parser.add_argument("--rw", action="store_true", help="mount read-write (an active snapshot)")
    _platform(parser, "mount this platform of an index (default: the host's)")
    _snapshotter(parser)

    parser = verb(group, "unmount", "unmount an image mounted with `images mount`", unmount)
    parser.add_argument("target", metavar="DIR")
    parser.add_argument("--rm", action="store_true", help="also remove the snapshot and its lease")
    _snapshotter(parser)
