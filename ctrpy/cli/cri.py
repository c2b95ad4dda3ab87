"""``ctrpy cri ...``: Kubernetes' CRI from the command line, like crictl.

The commands speak ``runtime.v1`` to the same socket (``--address``) through
:class:`ctrpy.cri.CriClient`; the namespace option does not apply (the runtime works in
``k8s.io``). Served now: ``version``, ``info``, ``images``, ``pull``, ``inspecti``, ``rmi``,
``imagefsinfo``, and for pods ``runp``, ``pods``, ``inspectp``, ``stopp``, ``rmp`` (in
:mod:`.cri_pods`). Each verb is one entry of :data:`VERBS`, so that pods and containers (``runp``,
``create``, ``ps``, ...) are added the same way. Output is crictl's: tables for people, JSON
for ``info`` and ``inspecti`` (and for everything with ``--format json``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.client import Client
from ctrpy.cri import CriClient
from ctrpy.errors import InvalidArgument

from . import cri_containers, cri_pods, crifmt, output, timeline
from .common import verb, verbs
from .progress import human_bytes

CriCommand = Callable[[CriClient, argparse.Namespace], int]


def version(cri: CriClient, args: argparse.Namespace) -> int:
    answer = cri.version()
    if args.format == "json":
        output.emit_json(crifmt.as_dict(answer))
        return 0
    print(f"Version:  {answer.version}\nRuntimeName:  {answer.runtime_name}\n"
          f"RuntimeVersion:  {answer.runtime_version}\nRuntimeApiVersion:  {answer.runtime_api_version}")
    return 0


def info(cri: CriClient, args: argparse.Namespace) -> int:
    status = cri.status(verbose=True)
    answer: dict[str, Any] = {"status": crifmt.as_dict(status.status)}
    if status.runtime_handlers:
        answer["runtimeHandlers"] = [crifmt.as_dict(h) for h in status.runtime_handlers]
    if status.HasField("features"):
        answer["features"] = crifmt.as_dict(status.features)
    output.emit_json(crifmt.with_info(answer, status.info))
    return 0


def _repo_and_tag(image: api.Image) -> list[tuple[str, str]]:
    """crictl's IMAGE and TAG columns: one row per tag, or ``<none>`` from a digest."""
    rows = []
    for tag in image.repo_tags:
        slash = tag.rfind("/")
        colon = tag.rfind(":")
        rows.append((tag[:colon], tag[colon + 1:]) if colon > slash else (tag, "<none>"))
    if not rows:
        names = [d.split("@", 1)[0] for d in image.repo_digests] or ["<none>"]
        rows.append((names[0], "<none>"))
    return rows


def images(cri: CriClient, args: argparse.Namespace) -> int:
    found = cri.list_images(args.image or "")
    if args.format == "json" or args.output == "json":
        output.emit_json({"images": [crifmt.as_dict(image) for image in found]})
        return 0
    if args.quiet:
        for image in found:
            print(image.id)
        return 0
    rows = []
    for image in sorted(found, key=lambda i: (list(i.repo_tags), i.id)):
        short = image.id.removeprefix("sha256:")[:13]
        for repo, tag in _repo_and_tag(image):
            rows.append((repo, tag, short, human_bytes(image.size)))
    output.table(("IMAGE", "TAG", "IMAGE ID", "SIZE"), rows)
    return 0


def _auth(args: argparse.Namespace) -> api.AuthConfig | None:
    if args.creds:
        user, sep, password = args.creds.partition(":")
        if not user or not sep:
            raise InvalidArgument("--creds must be USERNAME:PASSWORD")
        return api.AuthConfig(username=user, password=password)
    if args.auth:
        return api.AuthConfig(auth=args.auth)
    if args.identity_token:
        return api.AuthConfig(identity_token=args.identity_token)
    return None


def pull(cri: CriClient, args: argparse.Namespace) -> int:
    ref = cri.pull_image(args.image, auth=_auth(args))
    if args.format == "json":
        output.emit_json({"imageRef": ref})
    else:
        print(f"Image is up to date for {ref}")
    return 0


def inspecti(cri: CriClient, args: argparse.Namespace) -> int:
    answers = []
    missing = []
    for name in args.images:
        image, details = cri.image_status(name, verbose=True)
        if image is None:
            missing.append(name)
            continue
        answers.append(crifmt.with_info({"status": crifmt.as_dict(image)}, details))
    if answers:
        output.emit_json(answers[0] if len(answers) == 1 else answers)
    for name in missing:
        print(f"ctrpy: no such image {name!r} present", file=sys.stderr)
    return 1 if missing else 0


def rmi(cri: CriClient, args: argparse.Namespace) -> int:
    failed = 0
    for name in args.images:
        image, _ = cri.image_status(name)
        if image is None:
            print(f"ctrpy: no such image {name!r}", file=sys.stderr)
            failed += 1
            continue
        cri.remove_image(image.id)
        for ref in [*image.repo_tags, *image.repo_digests] or [image.id]:
            print(f"Deleted: {ref}")
    return 1 if failed else 0


def imagefsinfo(cri: CriClient, args: argparse.Namespace) -> int:
    output.emit_json({"status": crifmt.as_dict(cri.image_fs_info())})
    return 0


def _image_names(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+")


def _pull_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image")
    parser.add_argument("--creds", default="", help="USERNAME:PASSWORD for the registry")
    parser.add_argument("--auth", default="", help="base64 of USERNAME:PASSWORD")
    parser.add_argument("--identity-token", default="", help="a refresh token for the registry's token service")


def _images_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", nargs="?", help="only this image")
    parser.add_argument("--quiet", "-q", action="store_true", help="only image ids")
    parser.add_argument("--output", "-o", choices=("table", "json"), default="table")


#: verb -> (help, command, argument adder, aliases)
VERBS: dict[str, tuple[str, CriCommand, Callable[[argparse.ArgumentParser], None] | None, tuple[str, ...]]] = {
    "version": ("the runtime's name and versions", version, None, ()),
    "info": ("the runtime's status and configuration", info, None, ()),
    "images": ("list images", images, _images_args, ("img",)),
    "pull": ("pull an image", pull, _pull_args, ()),
    "inspecti": ("an image's status", inspecti, _image_names, ()),
    "rmi": ("remove images (every tag)", rmi, _image_names, ()),
    "imagefsinfo": ("the image filesystem's usage", imagefsinfo, None, ()),
    **cri_pods.VERBS,
    **cri_containers.VERBS,
    "timeline": ("where a container's or pod's start went, step by step", timeline.cri_timeline, timeline.add_id, ()),
}


def _runner(command: CriCommand) -> Callable[[Client, argparse.Namespace], int]:
    def run(client: Client, args: argparse.Namespace) -> int:
        with CriClient(client.address, client.timeout) as cri:
            return command(cri, args)

    return run


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = verbs(nouns, "cri", "Kubernetes' CRI (runtime.v1), like crictl")
    for name, (help_text, command, add_arguments, aliases) in VERBS.items():
        parser = verb(group, name, help_text, _runner(command), aliases=aliases)
        if add_arguments is not None:
            add_arguments(parser)
