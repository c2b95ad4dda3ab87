"""``export``: write images as an OCI image layout tar, with Docker's ``manifest.json`` too.

As ``ctr images export`` does: ``index.json`` lists each image's target annotated with its
name (``io.containerd.image.name``) and tag (``org.opencontainers.image.ref.name``); every blob
the targets need is copied under ``blobs/<alg>/<hex>`` (of an index, only the entries for the
wanted platforms unless all are asked for); ``manifest.json`` names, for each manifest, its
config, layers and familiar tags, so ``docker load`` can read the archive. Members are sorted
by name. Blobs are read in ranged windows and verified against their digests while copied.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from ctrpy import errors
from ctrpy.client import Client
from ctrpy.images import gojson, mediatypes, platforms, reference, store
from ctrpy.images.content import BlobReader
from ctrpy.images.model import Descriptor
from ctrpy.images.platforms import Matcher
from ctrpy.images.resolve import children, read_index, read_manifest

EXPORT_WINDOW = 1 << 20


@dataclass
class _Record:
    name: str
    mode: int
    size: int = 0
    data: bytes | None = None
    blob: Descriptor | None = None
    directory: bool = False


@dataclass
class _DockerEntry:
    manifest: Descriptor
    names: list[str] = field(default_factory=list)


def _blob_record(desc: Descriptor) -> _Record:
    algorithm, _, encoded = desc.digest.partition(":")
    return _Record(f"blobs/{algorithm}/{encoded}", 0o444, desc.size, blob=desc)


def _tree(client: Client, desc: Descriptor) -> list[_Record]:
    """``desc`` and everything below it, as blob records."""
    out = [_blob_record(desc)]
    for child in children(client, desc):
        out += _tree(client, child)
    return out


def _named(desc: Descriptor, name: str) -> Descriptor:
    annotations = dict(desc.annotations)
    annotations[mediatypes.ANNOTATION_IMAGE_NAME] = name
    annotations[mediatypes.ANNOTATION_REF_NAME] = reference.oci_ref_name(name)
    return desc.with_annotations(annotations)


def plan(client: Client, refs: Sequence[str], matcher: Matcher | None = None, all_platforms: bool = False,
         docker_manifest: bool = True) -> list[_Record]:
    """Every member of the archive for images ``refs``, sorted and without duplicates.

    Raises NotFound for an unknown image or missing content, InvalidArgument for an image
    whose target is neither a manifest nor an index.
    """
    matcher = matcher if matcher is not None else platforms.default_strict()
    targets = [_named(store.get(client, ref).target, ref) for ref in refs]
    layout = gojson.dumps({"imageLayoutVersion": mediatypes.OCI_LAYOUT_VERSION})
    index = gojson.dumps({"schemaVersion": 2, "manifests": [t.to_json() for t in targets]})
    records = [_Record("oci-layout", 0o444, len(layout), layout), _Record("index.json", 0o644, len(index), index)]
    entries: dict[str, _DockerEntry] = {}
    resolved: dict[str, str] = {}
    for target in targets:
        name = target.annotations.get(mediatypes.ANNOTATION_IMAGE_NAME, "")
        if mediatypes.is_manifest(target.media_type):
            if target.digest not in entries:
                records += _tree(client, target)
                entries[target.digest] = _DockerEntry(target)
            if name and docker_manifest:
                entries[target.digest].names.append(name)
        elif mediatypes.is_index(target.media_type):
            if target.digest not in resolved:
                records.append(_blob_record(target))
                wanted = []
                for entry in read_index(client, target).manifests:
                    if entry.platform is None or matcher.match(entry.platform):
                        wanted.append(entry)
                    elif not all_platforms:
                        continue
                    records += _tree(client, entry)
                chosen = ""
                if docker_manifest:
                    if not wanted:
                        raise errors.NotFound(f"image {name}: no manifest found for platform {matcher}")
                    best = platforms.best_first(matcher, wanted)[0]
                    chosen = best.digest
                    entries.setdefault(chosen, _DockerEntry(best))
                resolved[target.digest] = chosen
            if resolved[target.digest] and name:
                entries[resolved[target.digest]].names.append(name)
        else:
            raise errors.InvalidArgument(f"image {name}: only manifests may be exported, not {target.media_type}")
    if entries and docker_manifest:
        data = _docker_manifest(client, list(entries.values()))
        records.append(_Record("manifest.json", 0o644, len(data), data))
    algorithms = {r.name.split("/")[1] for r in records if r.blob is not None}
    if algorithms:
        records.append(_Record("blobs/", 0o755, directory=True))
        records += [_Record(f"blobs/{a}/", 0o755, directory=True) for a in sorted(algorithms)]
    unique: dict[str, _Record] = {}
    for record in sorted(records, key=lambda r: r.name.encode()):
        unique.setdefault(record.name, record)
    return list(unique.values())


def _blob_path(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def _docker_manifest(client: Client, entries: list[_DockerEntry]) -> bytes:
    out = []
    for entry in entries:
        manifest = read_manifest(client, entry.manifest)
        out.append({
            "Config": _blob_path(manifest.config.digest),
            "RepoTags": [reference.familiarize(n) for n in entry.names] or None,
            "Layers": [_blob_path(layer.digest) for layer in manifest.layers] or None,
        })
    return gojson.dumps(out)


def _write(client: Client, records: list[_Record], out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for record in records:
            info = tarfile.TarInfo(record.name)
            info.mode = record.mode
            info.mtime = 0
            info.uname = info.gname = ""
            if record.directory:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = record.size
            if record.data is not None:
                tar.addfile(info, io.BytesIO(record.data))
            else:
                assert record.blob is not None
                reader = io.BufferedReader(BlobReader(client, record.blob.digest, record.blob.size, EXPORT_WINDOW),
                                           EXPORT_WINDOW)
                tar.addfile(info, reader)
                if reader.read(1):
                    raise errors.FailedPrecondition(f"content {record.blob.digest}: larger than its descriptor says")


def export(client: Client, refs: Sequence[str], out: str | os.PathLike[str] | BinaryIO, *,
           matcher: Matcher | None = None, all_platforms: bool = False, docker_manifest: bool = True) -> None:
    """Write images ``refs`` as one OCI layout tar to ``out`` (a path, or an open binary file).

    The platform of an index is the host's alone unless ``matcher`` says otherwise. A path
    is written through a temporary file renamed into place, so a failed export leaves nothing.
    Raises NotFound for an unknown image or missing content, InvalidArgument (corrupt content)
    or OSError (writing).
    """
    if not refs:
        raise errors.InvalidArgument("no image to export")
    records = plan(client, refs, matcher, all_platforms, docker_manifest)
    if not isinstance(out, str | os.PathLike):
        _write(client, records, out)
        return
    path = os.fspath(out)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "wb") as f:
            _write(client, records, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise

