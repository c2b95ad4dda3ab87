"""``ctrpy images pull --local``: the pull done in the client, as ctr 1.6 does it.

For daemons without the Transfer service (containerd 1.6): the CLI talks to the registry itself,
with the same distribution client ctrpyd uses (:mod:`ctrpy.manager.registry`, which depends on
nothing of the daemon), and writes through the Content, Images, Snapshots and Diff services:

1. resolve and fetch every document for the wanted platforms (kept in memory);
2. download each layer the namespace lacks into a temporary file, verified by digest, then write
   it through ``Content.Write`` (a ref per blob, so an interrupted write resumes);
3. write the configs, manifests and indexes with containerd's ``gc.ref.content`` labels;
4. create the image record and unpack it (:func:`ctrpy.images.unpack`), all under one lease.

Unlike the server-side pull, layers are fetched one after the other and unpacked at the end.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from ctrpy import errors
from ctrpy import images as lib
from ctrpy.client import Client
from ctrpy.images import content, mediatypes, platforms, store
from ctrpy.images.model import Descriptor, Image, parse_index
from ctrpy.images.transfer import Progress, PullOptions
from ctrpy.manager.registry import (
    ImagePlan,
    Options,
    Remote,
    Session,
    StaticCredentials,
    parse,
    parse_user,
    plan,
)

GC_REF_CONTENT = "containerd.io/gc.ref.content"
DISTRIBUTION_SOURCE = "containerd.io/distribution.source."


def _matcher(options: PullOptions) -> platforms.Matcher | None:
    if not options.platforms:
        return None
    if len(options.platforms) == 1:
        return platforms.only(options.platforms[0])
    return platforms.ordered(options.platforms)


async def _fetch(client: Client, reference: str, options: PullOptions, directory: Path,
                 report: Callable[[Progress], None]) -> tuple[ImagePlan, dict[str, Path]]:
    """Resolve and plan; download every layer the namespace lacks into ``directory``."""
    credentials = StaticCredentials(parse_user(options.user)) if options.user else None
    async with Session(Options()) as session:
        remote = Remote(session, config_path=options.hosts_dir or None, plain_http=options.plain_http,
                        credentials=credentials)
        resolved = await remote.resolve(reference)
        report(Progress("resolved", str(resolved.ref)))
        image = await plan(remote, resolved, _matcher(options))
        files: dict[str, Path] = {}
        for layer in image.layers():
            if content.exists(client, layer.digest):
                report(Progress("already exists", layer.digest, layer.size, layer.size, layer.digest))
                continue
            path = directory / layer.digest.replace(":", "-")
            with open(path, "wb") as out:
                async for chunk in remote.fetch_blob(image.ref, layer):
                    out.write(chunk)
            files[layer.digest] = path
            report(Progress("complete", layer.digest, layer.size, layer.size, layer.digest))
        return image, files


def _write(client: Client, digest: str, data: BinaryIO, size: int,
           labels: Mapping[str, str]) -> None:
    written = content.write_blob(client, f"pull-{digest}", data, size, expected=digest, labels=labels)
    if written.existed and labels:
        content.update_labels(client, digest, labels)


def pull_local(client: Client, reference: str, options: PullOptions,
               report: Callable[[Progress], None], name: str = "") -> Image:
    """Pull ``reference`` in the client and store it as ``name`` (default: the reference)."""
    ref = parse(reference)
    source = {DISTRIBUTION_SOURCE + ref.host: ref.repository}
    with tempfile.TemporaryDirectory(prefix="ctrpy-pull-") as tmp:
        image, files = asyncio.run(_fetch(client, reference, options, Path(tmp), report))
        with client.lease():
            for layer in image.layers():
                if layer.digest in files:
                    with open(files[layer.digest], "rb") as stream:
                        _write(client, layer.digest, stream, layer.size, source)
            manifests = {desc.digest: manifest for desc, manifest in image.manifests}
            configs = {manifest.config.digest for manifest in manifests.values()}
            for digest in configs:
                data = image.documents[digest]
                _write(client, digest, io.BytesIO(data), len(data), source)
            for digest, manifest in manifests.items():
                labels = {**source, f"{GC_REF_CONTENT}.config": manifest.config.digest}
                labels.update({f"{GC_REF_CONTENT}.l.{i}": layer.digest for i, layer in enumerate(manifest.layers)})
                data = image.documents[digest]
                _write(client, digest, io.BytesIO(data), len(data), labels)
            for digest, data in image.documents.items():
                if digest in manifests or digest in configs:
                    continue
                media_type = image.root.media_type if digest == image.root.digest else mediatypes.OCI_INDEX
                index = parse_index(data, media_type, f"{ref}: {digest}")
                labels = dict(source)
                labels.update({f"{GC_REF_CONTENT}.m.{i}": entry.digest for i, entry in enumerate(index.manifests)
                               if entry.digest in image.documents})
                _write(client, digest, io.BytesIO(data), len(data), labels)
            root = image.root
            record = store.put(client, Image(name or reference, Descriptor(root.media_type, root.digest, root.size)))
            for platform in options.unpack:
                try:
                    lib.unpack(client, record, options.snapshotter or None, platforms.only(platform))
                except errors.NotFound as error:
                    if "no match for platform" not in error.message:
                        raise
            report(Progress("saved", record.name))
            return record
