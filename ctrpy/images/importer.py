"""``import_archive``: bring an OCI layout tar or a ``docker save`` archive into the daemon.

The steps are those of ``ctr images import``, all inside one lease:

1. stream every member into the content store (:mod:`ctrpy.images.archive`); a Docker archive
   then gets a manifest and an index written for it (:mod:`ctrpy.images.docker`);
2. name the images from the index entries: ``io.containerd.image.name``, else the OCI
   ``ref.name`` put under a base name; optionally ``<base>@<digest>`` names and a name for the
   index itself;
3. walk the content from the index, keeping only entries for the wanted platforms, and label
   each parent with GC references to its children;
4. unpack each image (unless told not to), then create or update the image records.

Two things are stricter than ctr, so that bad input leaves no image behind: every config and
layer the walk reaches must be in the store, and images are unpacked *before* their records
are written (a layer whose content does not match its diff_id fails the whole import).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import BinaryIO, Protocol

from ctrpy import errors
from ctrpy.client import Client
from ctrpy.images import content, docker, mediatypes, platforms, reference, store, unpack
from ctrpy.images.archive import read_archive
from ctrpy.images.model import Descriptor, Image
from ctrpy.images.platforms import Matcher
from ctrpy.images.resolve import children, fits, read_index


class Reporter(Protocol):
    """What an import tells its caller as it goes (a progress bar, a log)."""

    def read(self, done: int, total: int | None) -> None:
        """``done`` bytes of the archive (of ``total``, when known) have been read."""

    def unpacking(self, image: Image) -> None:
        """``image`` is about to be unpacked."""

    def unpacked(self, image: Image, chain_id: str) -> None:
        """``image`` is unpacked; its top snapshot is ``chain_id``."""


def default_base_name() -> str:
    """The base name ctr gives images of an OCI archive when none is given."""
    return f"import-{date.today():%Y-%m-%d}"


def image_name(annotations: dict[str, str] | None, translate: Callable[[str], str]) -> str:
    """The name an index entry asks for: ``io.containerd.image.name``, else the translated OCI
    ``ref.name``, else ``""`` (no image)."""
    annotations = annotations or {}
    name = annotations.get(mediatypes.ANNOTATION_IMAGE_NAME, "")
    if name:
        return name
    ref = annotations.get(mediatypes.ANNOTATION_REF_NAME, "")
    return translate(ref) if ref else ""


def import_archive(
    client: Client,
    source: str | os.PathLike[str] | BinaryIO,
    *,
    base_name: str = "",
    index_name: str = "",
    digests: bool = False,
    skip_digest_for_named: bool = False,
    all_platforms: bool = False,
    platform: Matcher | None = None,
    unpack_images: bool = True,
    snapshotter: str | None = None,
    reporter: Reporter | None = None,
) -> list[Image]:
    """Import the archive at ``source`` (a path, or an open binary file) and return the images
    created or updated.

    ``base_name`` names OCI entries that carry only a tag, and when given, keeps only
    entries whose full name starts with it (ctr's ``--base-name``). ``digests`` also creates
    ``<base>@<digest>`` images. ``all_platforms`` keeps every entry of the index; otherwise
    ``platform`` (default: the host's) decides. Raises InvalidArgument for an archive that is
    not a readable image archive, NotFound ("image might be filtered out") when no entry fits
    the platform or a referenced blob is missing, FailedPrecondition when a blob's bytes do not
    match their digest or a layer its diff_id. Nothing is recorded when it fails.
    """
    matcher: Matcher = platforms.ALL if all_platforms else (platform or platforms.default())
    prefix = base_name or default_base_name()
    naming = _Naming(prefix, reference.ref_translator(prefix, only_prefixed=bool(base_name)), index_name, digests,
                     skip_digest_for_named)
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as stream:
            total = os.fstat(stream.fileno()).st_size
            return _import(client, stream, os.fspath(source), total, naming, matcher, platform, unpack_images,
                           snapshotter, reporter)
    label = str(getattr(source, "name", "archive"))
    return _import(client, source, label, None, naming, matcher, platform, unpack_images, snapshotter, reporter)


@dataclass(frozen=True)
class _Naming:
    """How index entries become image names."""

    prefix: str
    translate: Callable[[str], str]
    index_name: str
    digests: bool
    skip_digest_for_named: bool

    def images(self, index: Descriptor, entries: Sequence[Descriptor]) -> list[Image]:
        images: list[Image] = [Image(self.index_name, index)] if self.index_name else []
        for entry in entries:
            name = image_name(dict(entry.annotations), self.translate)
            if name:
                images.append(Image(name, entry))
            if self.digests and not (self.skip_digest_for_named and name):
                images.append(Image(f"{self.prefix}@{entry.digest}", entry))
        return images


def _import(client: Client, stream: BinaryIO, label: str, total: int | None, naming: _Naming, matcher: Matcher,
            platform: Matcher | None, unpack_images: bool, snapshotter: str | None,
            reporter: Reporter | None) -> list[Image]:
    def progress(done: int) -> None:
        if reporter is not None:
            reporter.read(done, total)

    with client.lease():
        index = _ingest(client, stream, label, progress)
        entries = read_index(client, index).manifests
        images = naming.images(index, entries)
        _label_and_verify(client, index, entries, matcher)
        if unpack_images:
            for image in images:
                if reporter is not None:
                    reporter.unpacking(image)
                chain = unpack.unpack(client, image, snapshotter, platform or platforms.default())
                if reporter is not None:
                    reporter.unpacked(image, chain)
        return [store.put(client, image) for image in images]


def _ingest(client: Client, stream: BinaryIO, label: str, progress: Callable[[int], None]) -> Descriptor:
    archive = read_archive(client, stream, label, progress)
    if archive.layout_version is not None and archive.layout_version != "":
        if archive.layout_version != mediatypes.OCI_LAYOUT_VERSION:
            raise errors.InvalidArgument(f"{label}: unsupported OCI version {archive.layout_version}")
        if "index.json" not in archive.blobs:
            raise errors.InvalidArgument(f"{label}: missing index.json in OCI layout {mediatypes.OCI_LAYOUT_VERSION}")
        blob = archive.blobs["index.json"]
        return Descriptor(mediatypes.OCI_INDEX, blob.digest, blob.size)
    if archive.docker_manifests is None:
        raise errors.InvalidArgument(f"{label}: unrecognized image format (neither an OCI layout nor a docker archive)")
    return docker.convert(client, archive)


def _label_and_verify(client: Client, index: Descriptor, entries: Sequence[Descriptor], matcher: Matcher) -> None:
    """Walk from the index through the entries that fit ``matcher``, setting GC labels on every
    parent, then check that every config and layer reached is stored."""
    leaves: list[Descriptor] = []
    pending: list[tuple[Descriptor, Sequence[Descriptor] | None]] = [(index, entries)]
    found_any = False
    while pending:
        desc, known = pending.pop(0)
        kids = [d for d in (known if known is not None else children(client, desc)) if fits(matcher, d)]
        if kids:
            found_any = True
            content.update_labels(client, desc.digest, mediatypes.gc_labels([(d.media_type, d.digest) for d in kids]))
        for kid in kids:
            if mediatypes.is_manifest(kid.media_type) or mediatypes.is_index(kid.media_type):
                pending.append((kid, None))
            elif not mediatypes.is_non_distributable(kid.media_type):
                leaves.append(kid)
    if not found_any:
        raise errors.NotFound(f"index {index.digest}: image might be filtered out (no content for platform {matcher})")
    for leaf in leaves:
        try:
            stored = content.info(client, leaf.digest)
        except errors.NotFound:
            raise errors.NotFound(f"blob {leaf.digest} ({leaf.media_type}) is not in the archive") from None
        if stored.size != leaf.size:
            raise errors.InvalidArgument(f"blob {leaf.digest}: size {stored.size} differs from the {leaf.size} its descriptor says")
