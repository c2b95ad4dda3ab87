"""Reading an image archive: every regular member streamed into the content store.

Both formats ctr imports are read the same way, sequentially and without extracting: OCI
image layout tars (``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``) and ``docker save``
archives (``manifest.json``, ``<id>/layer.tar``, ``<hex>.json``...). ``oci-layout`` and
``manifest.json`` are parsed; every other regular file becomes a blob through the ingest
``tar-<member name>``, as containerd's importer names them. A member named like a blob
(``blobs/sha256/<hex>``) is written with that digest as the expected one, so a blob whose bytes
do not match its name is refused by the store. Symbolic links are recorded (Docker archives
use them to share layers).
"""

from __future__ import annotations

import gzip
import json
import lzma
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO

from ctrpy import errors
from ctrpy.client import Client
from ctrpy.images import content
from ctrpy.images.model import MAX_DOCUMENT

_BLOB_NAME = re.compile(r"^blobs/(sha256)/([a-f0-9]{64})$")


@dataclass(frozen=True)
class Blob:
    """A member stored as a blob: its digest and size."""

    digest: str
    size: int


@dataclass(frozen=True)
class DockerManifest:
    """One entry of a Docker archive's ``manifest.json``."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]


@dataclass
class Archive:
    """What reading an archive found: the blobs by (cleaned) member name, the symlinks, and the
    parsed ``oci-layout`` version and ``manifest.json`` (None when absent)."""

    blobs: dict[str, Blob] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    layout_version: str | None = None
    docker_manifests: list[DockerManifest] | None = None


class _Counting:
    """A read-only file that reports how many bytes have been read from it."""

    def __init__(self, raw: BinaryIO, report: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._report = report
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        if self._report is not None and data:
            self._report(self.count)
        return data


def _json_member(fileobj: IO[bytes], size: int, what: str) -> Any:
    if size > MAX_DOCUMENT:
        raise errors.InvalidArgument(f"untar {what}: larger than {MAX_DOCUMENT} bytes")
    try:
        return json.loads(fileobj.read(size))
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.InvalidArgument(f"untar {what}: {exc}") from None


def _layout_version(value: Any) -> str:
    if not isinstance(value, dict) or not isinstance(value.get("imageLayoutVersion", ""), str):
        raise errors.InvalidArgument("untar oci layout: imageLayoutVersion must be a string")
    return str(value.get("imageLayoutVersion", ""))


def _docker_manifests(value: Any) -> list[DockerManifest]:
    if not isinstance(value, list):
        raise errors.InvalidArgument("untar manifest \"manifest.json\": expected a list")
    out = []
    for i, entry in enumerate(value):
        where = f"manifest.json entry {i}"
        if not isinstance(entry, dict):
            raise errors.InvalidArgument(f"{where}: expected an object")
        config = entry.get("Config", "")
        tags = entry.get("RepoTags") or []
        layers = entry.get("Layers") or []
        if not isinstance(config, str) or not all(isinstance(t, str) for t in tags) or not all(
                isinstance(layer, str) for layer in layers):
            raise errors.InvalidArgument(f"{where}: Config, RepoTags and Layers must hold strings")
        out.append(DockerManifest(config, tuple(tags), tuple(layers)))
    return out


def read_archive(client: Client, source: BinaryIO, label: str,
                 progress: Callable[[int], None] | None = None) -> Archive:
    """Stream the tar ``source`` into the content store and return what it held.

    ``label`` names the archive in errors; ``progress`` gets the number of archive bytes read
    so far. Gzip- or xz-compressed tars are accepted too. Raises InvalidArgument for an
    archive that is not a readable tar, and what the content store raises for a blob it
    refuses (FailedPrecondition for one whose bytes do not match its name).
    """
    found = Archive()
    counting = _Counting(source, progress)
    try:
        with tarfile.open(fileobj=counting, mode="r|*") as tar:  # type: ignore[call-overload]
            for member in tar:
                _take(client, tar, member, found)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as exc:
        raise errors.InvalidArgument(f"{label}: not a readable tar archive: {exc}") from None
    return found


def _take(client: Client, tar: tarfile.TarFile, member: tarfile.TarInfo, found: Archive) -> None:
    if member.issym():
        found.symlinks[member.name] = posixpath.normpath(
            posixpath.join(posixpath.dirname(member.name), member.linkname))
    if not member.isreg():
        return
    name = posixpath.normpath(member.name)
    fileobj = tar.extractfile(member)
    if fileobj is None:  # pragma: no cover - isreg() members always have data
        return
    if name == "oci-layout":
        found.layout_version = _layout_version(_json_member(fileobj, member.size, f"oci layout {member.name!r}"))
        return
    if name == "manifest.json":
        found.docker_manifests = _docker_manifests(_json_member(fileobj, member.size, f"manifest {member.name!r}"))
        return
    match = _BLOB_NAME.fullmatch(name)
    expected = f"{match[1]}:{match[2]}" if match else ""
    try:
        written = content.write_blob(client, "tar-" + name, fileobj, member.size, expected)  # type: ignore[arg-type]
    except errors.CtrpyError as exc:
        raise type(exc)(f"failed to ingest {member.name!r}: {exc.message}") from None
    found.blobs[name] = Blob(written.digest, member.size)
