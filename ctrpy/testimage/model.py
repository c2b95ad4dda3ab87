"""What a test image is made of: entries, layers, images, and what writing one reports.

An :class:`Image` is a name, an ordered tuple of layers (bottom first) and a few config fields.
A :class:`Layer` is an ordered tuple of :class:`Entry` values; the order is the order of the tar
members, so a hard link must come after its target. A :class:`RawLayer` is a layer given as the
finished blob (used for hostile layers that the entry model refuses to describe).

Paths in entries are absolute (``/etc/passwd``); they become tar names without the leading slash.
Whiteouts and opaque markers are ordinary empty files with the special names of the OCI image
spec, made by :func:`whiteout` and :func:`opaque`.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

# Every timestamp written into a test image: 2024-01-01T00:00:00Z. Fixed so digests are stable.
EPOCH = 1704067200
CREATED = "2024-01-01T00:00:00Z"

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Kinds of entry, named as expected_tree() and scan_tree() report them.
FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"
CHAR = "char"
BLOCK = "block"
FIFO = "fifo"
KINDS = frozenset({FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO})

_RANDOM_BLOCK = 1 << 20


@dataclass(frozen=True)
class RandomContent:
    """``size`` bytes of pseudo-random, incompressible data, fully determined by ``seed``.

    The bytes are generated in fixed 1 MiB blocks from ``random.Random(seed)``, so they do not
    depend on how a reader slices them.
    """

    size: int
    seed: int

    def chunks(self) -> Iterator[bytes]:
        """Yield the content in order, at most 1 MiB at a time."""
        rng = random.Random(self.seed)
        left = self.size
        while left > 0:
            block = rng.randbytes(_RANDOM_BLOCK)
            yield block[:left] if left < _RANDOM_BLOCK else block
            left -= _RANDOM_BLOCK

    def digest(self) -> str:
        """Return ``sha256:<hex>`` of the content."""
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return "sha256:" + h.hexdigest()


Content = bytes | RandomContent


@dataclass(frozen=True)
class Entry:
    """One tar member of a layer.

    ``kind`` is one of file, dir, symlink, hardlink, char, block, fifo. ``target`` is the link
    target (for a hard link, an absolute path inside the image). ``xattrs`` are written as PAX
    ``SCHILY.xattr.<name>`` records.
    """

    path: str
    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    data: Content = b""
    target: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"entry {self.path!r}: unknown kind {self.kind!r}")
        if not self.path.startswith("/") or self.path == "/":
            raise ValueError(f"entry path must be absolute and not the root: {self.path!r}")
        if self.kind != FILE and self.size:
            raise ValueError(f"entry {self.path!r}: only regular files carry data")

    @property
    def size(self) -> int:
        """The number of content bytes."""
        return self.data.size if isinstance(self.data, RandomContent) else len(self.data)

    @property
    def tar_name(self) -> str:
        """The member name in the tar: the path without its leading slash."""
        return self.path.lstrip("/")

    def content_digest(self) -> str:
        """Return ``sha256:<hex>`` of the entry's content."""
        if isinstance(self.data, RandomContent):
            return self.data.digest()
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


def file(path: str, data: Content = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
         xattrs: dict[str, bytes] | None = None) -> Entry:
    """A regular file."""
    return Entry(path, FILE, mode, uid, gid, data=data,
                 xattrs=tuple(sorted((xattrs or {}).items())))


def directory(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0,
              xattrs: dict[str, bytes] | None = None) -> Entry:
    """A directory."""
    return Entry(path, DIR, mode, uid, gid, xattrs=tuple(sorted((xattrs or {}).items())))


def symlink(path: str, target: str, uid: int = 0, gid: int = 0) -> Entry:
    """A symbolic link; ``target`` is stored verbatim."""
    return Entry(path, SYMLINK, 0o777, uid, gid, target=target)


def hardlink(path: str, target: str) -> Entry:
    """A hard link to ``target``, an absolute path written earlier in the same layer."""
    if not target.startswith("/"):
        raise ValueError(f"hard link target must be absolute: {target!r}")
    return Entry(path, HARDLINK, 0o644, target=target)


def chardev(path: str, major: int, minor: int, mode: int = 0o666, uid: int = 0,
            gid: int = 0) -> Entry:
    """A character device node."""
    return Entry(path, CHAR, mode, uid, gid, devmajor=major, devminor=minor)


def fifo(path: str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    """A named pipe."""
    return Entry(path, FIFO, mode, uid, gid)


def whiteout(path: str) -> Entry:
    """A whiteout: hides ``path`` (and everything under it) of the layers below."""
    parent, base = posixpath.split(path)
    return Entry(posixpath.join(parent, WHITEOUT_PREFIX + base), FILE, 0o644)


def opaque(dir_path: str) -> Entry:
    """An opaque marker: hides everything the layers below hold under ``dir_path``."""
    return Entry(posixpath.join(dir_path, OPAQUE_MARKER), FILE, 0o644)


@dataclass(frozen=True)
class Layer:
    """An ordered tuple of entries, written as one tar; ``compresslevel`` is gzip's level."""

    entries: tuple[Entry, ...]
    compresslevel: int = 6


@dataclass(frozen=True)
class RawLayer:
    """A finished layer blob with its digests, for layers the entry model cannot express."""

    blob: bytes
    diff_id: str
    uncompressed_size: int
    media_type: str = MEDIA_OCI_LAYER_GZIP

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the blob."""
        return "sha256:" + hashlib.sha256(self.blob).hexdigest()

    def descriptor(self) -> dict[str, object]:
        """The OCI descriptor of the blob: mediaType, digest, size."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.blob)}


def host_arch() -> str:
    """The host's CPU architecture in OCI (GOARCH) spelling: x86_64 -> amd64, aarch64 -> arm64."""
    machine = os.uname().machine
    return {
        "x86_64": "amd64",
        "aarch64": "arm64",
        "armv7l": "arm",
        "i686": "386",
        "ppc64le": "ppc64le",
        "s390x": "s390x",
        "riscv64": "riscv64",
    }.get(machine, machine)


@dataclass(frozen=True)
class Image:
    """A whole image: its full reference and its layers (bottom first) plus config fields.

    ``name`` is a full reference such as ``docker.io/library/busybox:latest``; a name without a
    tag gets ``:latest``.
    """

    name: str
    layers: tuple[Layer | RawLayer, ...]
    env: tuple[str, ...] = (DEFAULT_PATH,)
    cmd: tuple[str, ...] = ("sh",)
    entrypoint: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    architecture: str = field(default_factory=host_arch)
    os: str = "linux"

    def __post_init__(self) -> None:
        if not self.name or "@" in self.name:
            raise ValueError(f"image name must be a tagged reference: {self.name!r}")
        if ":" not in self.name.rsplit("/", 1)[-1]:
            object.__setattr__(self, "name", self.name + ":latest")

    @property
    def tag(self) -> str:
        """The tag part of the name (``latest`` for ``docker.io/library/busybox:latest``)."""
        return self.name.rsplit(":", 1)[1]

    @property
    def repository(self) -> str:
        """The name without its tag."""
        return self.name.rsplit(":", 1)[0]


@dataclass(frozen=True)
class LayerInfo:
    """One layer as written: blob digest and size, media type, diff_id, uncompressed size."""

    digest: str
    size: int
    media_type: str
    diff_id: str
    uncompressed_size: int


@dataclass(frozen=True)
class ImageInfo:
    """What writing an image archive produced.

    ``manifest_digest`` is None for a docker archive, which holds no manifest: the importer
    builds one. ``chain_ids`` are the OCI chain IDs, bottom layer first; the last one names the
    snapshot an unpacked image ends at.
    """

    name: str
    format: str
    archive_size: int
    config_digest: str
    config_size: int
    layers: tuple[LayerInfo, ...]
    chain_ids: tuple[str, ...]
    manifest_digest: str | None = None
    manifest_size: int | None = None
    manifest_media_type: str | None = None

    @property
    def diff_ids(self) -> tuple[str, ...]:
        """The diff_ids of the layers, bottom first."""
        return tuple(layer.diff_id for layer in self.layers)

    def to_json(self) -> dict[str, object]:
        """A plain dict of every field, for printing."""
        return {
            "name": self.name,
            "format": self.format,
            "archive_size": self.archive_size,
            "manifest_digest": self.manifest_digest,
            "manifest_size": self.manifest_size,
            "manifest_media_type": self.manifest_media_type,
            "config_digest": self.config_digest,
            "config_size": self.config_size,
            "layers": [vars(layer) for layer in self.layers],
            "chain_ids": list(self.chain_ids),
        }


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The OCI chain IDs: chain(0) = diff(0); chain(n) = sha256(chain(n-1) + " " + diff(n))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            joined = f"{out[-1]} {diff_id}".encode()
            out.append("sha256:" + hashlib.sha256(joined).hexdigest())
    return tuple(out)
