"""Image documents as small frozen dataclasses, parsed from JSON with clear errors.

A :class:`Descriptor` points at a blob (media type, digest, size, annotations, platform); a
:class:`Manifest` lists a config and layers; an :class:`Index` lists manifests; an
:class:`ImageConfig` carries what unpacking needs (platform and diff_ids). An :class:`Image` is
a named record of the Images service: a name and the descriptor of its target.

Parsing follows containerd: a manifest that holds ``manifests`` (or an index that holds
``config`` or ``layers``) is refused, and so is Docker schema 1. Every error is an
:class:`~ctrpy.errors.InvalidArgument` that names the document.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from ctrpy.errors import InvalidArgument
from ctrpy.images import mediatypes
from ctrpy.images.gojson import GoMap

Labels = Mapping[str, str]
_EMPTY: Labels = MappingProxyType({})

# go-digest's grammar, and the algorithms it knows with the length of their hex digests.
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

# Documents (manifests, indexes, configs) are read whole; refuse absurd sizes, as containerd's
# importer limits JSON to 20 MiB.
MAX_DOCUMENT = 20 << 20


def validate_digest(digest: str, where: str = "digest") -> str:
    """Return ``digest`` if it is a well-formed ``algorithm:hex`` of a known algorithm (sha256,
    sha384, sha512); raise InvalidArgument naming ``where`` otherwise."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidArgument(f"{where}: invalid digest {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    if algorithm not in _HEX_LENGTHS:
        raise InvalidArgument(f"{where}: unsupported digest algorithm {digest!r}")
    if len(encoded) != _HEX_LENGTHS[algorithm] or encoded.strip("0123456789abcdef"):
        raise InvalidArgument(f"{where}: invalid {algorithm} digest {digest!r}")
    return digest


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """OCI chain ids: ``chain(0) = diff(0)``, ``chain(n) = sha256(chain(n-1) + " " + diff(n))``."""
    out: list[str] = []
    for diff_id in diff_ids:
        out.append(diff_id if not out else sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return tuple(out)


def chain_id(diff_ids: Sequence[str]) -> str:
    """The chain id of the whole stack (``""`` for no layers)."""
    ids = chain_ids(diff_ids)
    return ids[-1] if ids else ""


def _string(data: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{where}: missing {key!r}")
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: {key!r} must be a string")
    return value


def _string_map(value: Any, where: str) -> Labels:
    if value is None:
        return _EMPTY
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgument(f"{where}: annotations must map strings to strings")
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Platform:
    """What an image runs on: ``linux/amd64``, ``linux/arm/v7``..."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.os:
            return "unknown"
        return "/".join(part for part in (self.os, self.architecture, self.variant) if part)

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON object, fields in the order Go writes them."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.os_features:
            out["os.features"] = list(self.os_features)
        if self.variant:
            out["variant"] = self.variant
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "platform") -> Platform:
        if not isinstance(data, dict):
            raise InvalidArgument(f"{where}: platform must be an object")
        features = data.get("os.features") or []
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise InvalidArgument(f"{where}: os.features must be a list of strings")
        return cls(
            os=_string(data, "os", where),
            architecture=_string(data, "architecture", where),
            variant=_string(data, "variant", where),
            os_version=_string(data, "os.version", where),
            os_features=tuple(features),
        )


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: media type, digest and size, with optional annotations and platform."""

    media_type: str
    digest: str
    size: int
    annotations: Labels = field(default_factory=lambda: _EMPTY)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The OCI JSON object, fields in the order Go's ``ocispec.Descriptor`` writes them."""
        out: dict[str, Any] = {}
        if self.media_type:
            out["mediaType"] = self.media_type
        out["digest"] = self.digest
        out["size"] = self.size
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = GoMap(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        return out

    def with_annotations(self, annotations: Mapping[str, str]) -> Descriptor:
        """A copy whose annotations are ``annotations``."""
        return Descriptor(self.media_type, self.digest, self.size, MappingProxyType(dict(annotations)),
                          self.platform, self.urls)

    @classmethod
    def from_json(cls, data: Any, where: str = "descriptor") -> Descriptor:
        """Parse and validate one descriptor object; raises InvalidArgument naming ``where``."""
        if not isinstance(data, dict):
            raise InvalidArgument(f"{where}: descriptor must be an object")
        digest = validate_digest(_string(data, "digest", where, required=True), where)
        size = data.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"{where}: size must be a non-negative integer")
        platform = data.get("platform")
        urls = data.get("urls") or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise InvalidArgument(f"{where}: urls must be a list of strings")
        return cls(
            media_type=_string(data, "mediaType", where),
            digest=digest,
            size=size,
            annotations=_string_map(data.get("annotations"), where),
            platform=Platform.from_json(platform, where) if platform is not None else None,
            urls=tuple(urls),
        )


@dataclass(frozen=True)
class Manifest:
    """An image manifest: its config and its layers, bottom first."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = ""
    annotations: Labels = field(default_factory=lambda: _EMPTY)

    def children(self) -> tuple[Descriptor, ...]:
        """The config, then the layers (the order containerd walks and labels them)."""
        return (self.config, *self.layers)


@dataclass(frozen=True)
class Index:
    """An index (or Docker manifest list): descriptors of manifests or nested indexes."""

    manifests: tuple[Descriptor, ...]
    media_type: str = ""
    annotations: Labels = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config that ctrpy uses: platform and the layers' diff_ids."""

    os: str
    architecture: str
    variant: str
    diff_ids: tuple[str, ...]

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


@dataclass(frozen=True)
class Image:
    """A record of the Images service: ``name`` points at ``target`` (a manifest or an index)."""

    name: str
    target: Descriptor
    labels: Labels = field(default_factory=lambda: _EMPTY)
    created_at: datetime | None = None
    updated_at: datetime | None = None


def load_json(data: bytes, where: str) -> dict[str, Any]:
    """Decode one JSON object; raises InvalidArgument naming ``where`` if it is not one."""
    if len(data) > MAX_DOCUMENT:
        raise InvalidArgument(f"{where}: document larger than {MAX_DOCUMENT} bytes")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: expected a JSON object")
    return value


def _check_kind(doc: Mapping[str, Any], media_type: str, where: str) -> None:
    """containerd's ``validateMediaType``: the document's shape must fit its media type."""
    if doc.get("fsLayers"):
        raise InvalidArgument(f"{where}: media-type: schema 1 not supported")
    inner = doc.get("mediaType", "")
    if mediatypes.is_manifest(media_type) and (doc.get("manifests") or mediatypes.is_index(inner)):
        raise InvalidArgument(f"{where}: media-type: expected manifest but found index ({media_type})")
    if mediatypes.is_index(media_type) and (doc.get("config") or doc.get("layers") or mediatypes.is_manifest(inner)):
        raise InvalidArgument(f"{where}: media-type: expected index but found manifest ({media_type})")


def parse_manifest(data: bytes, media_type: str = mediatypes.OCI_MANIFEST, where: str = "manifest") -> Manifest:
    """Parse a manifest document; raises InvalidArgument when it is malformed."""
    doc = load_json(data, where)
    _check_kind(doc, media_type, where)
    if "config" not in doc:
        raise InvalidArgument(f"{where}: missing config")
    layers = doc.get("layers")
    layers = [] if layers is None else layers
    if not isinstance(layers, list):
        raise InvalidArgument(f"{where}: layers must be a list")
    return Manifest(
        config=Descriptor.from_json(doc["config"], f"{where}: config"),
        layers=tuple(Descriptor.from_json(layer, f"{where}: layer {i}") for i, layer in enumerate(layers)),
        media_type=_string(doc, "mediaType", where),
        annotations=_string_map(doc.get("annotations"), where),
    )


def parse_index(data: bytes, media_type: str = mediatypes.OCI_INDEX, where: str = "index") -> Index:
    """Parse an index document; raises InvalidArgument when it is malformed."""
    doc = load_json(data, where)
    _check_kind(doc, media_type, where)
    manifests = doc.get("manifests")
    manifests = [] if manifests is None else manifests
    if not isinstance(manifests, list):
        raise InvalidArgument(f"{where}: manifests must be a list")
    return Index(
        manifests=tuple(Descriptor.from_json(m, f"{where}: manifest {i}") for i, m in enumerate(manifests)),
        media_type=_string(doc, "mediaType", where),
        annotations=_string_map(doc.get("annotations"), where),
    )


def parse_config(data: bytes, where: str = "config") -> ImageConfig:
    """Parse an image config (its platform and ``rootfs.diff_ids``); raises InvalidArgument."""
    doc = load_json(data, where)
    rootfs = doc.get("rootfs")
    if rootfs is None:
        diff_ids: list[Any] = []
    elif isinstance(rootfs, dict):
        diff_ids = rootfs.get("diff_ids") or []
    else:
        raise InvalidArgument(f"{where}: rootfs must be an object")
    if not isinstance(diff_ids, list):
        raise InvalidArgument(f"{where}: rootfs.diff_ids must be a list")
    return ImageConfig(
        os=_string(doc, "os", where),
        architecture=_string(doc, "architecture", where),
        variant=_string(doc, "variant", where),
        diff_ids=tuple(validate_digest(d, f"{where}: diff_id {i}") for i, d in enumerate(diff_ids)),
    )
