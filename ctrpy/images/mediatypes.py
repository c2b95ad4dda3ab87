"""The media types of OCI and Docker images, and what kind of document each one names."""

from __future__ import annotations

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYOUT_VERSION = "1.0.0"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEXES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
CONFIGS = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# Annotations that name an image (containerd's own, and the OCI tag-only one).
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def is_manifest(media_type: str) -> bool:
    """An image manifest (OCI or Docker schema 2)."""
    return media_type in MANIFESTS


def is_index(media_type: str) -> bool:
    """An index of manifests (OCI index or Docker manifest list)."""
    return media_type in INDEXES


def is_config(media_type: str) -> bool:
    """An image configuration."""
    return media_type in CONFIGS


_DOCKER_LAYERS = frozenset({DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_FOREIGN_LAYER,
                            "application/vnd.docker.image.rootfs.foreign.diff.tar"})

# Labels that tie a blob to its children so the garbage collector keeps them (containerd's
# ``ChildGCLabels``). Keys ending in "." get the child's index appended; others get an index
# only from their second use on.
GC_REF_CONFIG = "containerd.io/gc.ref.content.config"
GC_REF_MANIFEST = "containerd.io/gc.ref.content.m."
GC_REF_LAYER = "containerd.io/gc.ref.content.l."
GC_REF_OTHER = "containerd.io/gc.ref.content."


def is_layer(media_type: str) -> bool:
    """A layer blob, compressed or not, as containerd's ``IsLayerType`` decides."""
    if media_type.startswith("application/vnd.oci.image.layer."):
        return True
    return media_type.split("+", 1)[0] in _DOCKER_LAYERS


def is_non_distributable(media_type: str) -> bool:
    """A layer that archives may leave out (Windows base layers)."""
    return media_type.startswith(("application/vnd.oci.image.layer.nondistributable.",
                                  "application/vnd.docker.image.rootfs.foreign."))


def gc_label_key(media_type: str) -> str:
    """The GC reference label (prefix) a parent uses for a child of this media type."""
    if is_config(media_type):
        return GC_REF_CONFIG
    if is_manifest(media_type):
        return GC_REF_MANIFEST
    if is_layer(media_type):
        return GC_REF_LAYER
    return GC_REF_OTHER


def gc_labels(children_media_types: list[tuple[str, str]]) -> dict[str, str]:
    """The GC labels for a parent whose children are ``(media type, digest)`` pairs, in order."""
    labels: dict[str, str] = {}
    used: dict[str, int] = {}
    for media_type, digest in children_media_types:
        key = gc_label_key(media_type)
        index = used.get(key, 0)
        used[key] = index + 1
        if index > 0 or key.endswith("."):
            key = f"{key}{index}"
        labels[key] = digest
    return labels


def compression_of(header: bytes) -> str:
    """``gzip``, ``zstd`` or ``""`` (uncompressed), from the first bytes of a blob."""
    if header.startswith(GZIP_MAGIC):
        return "gzip"
    if header.startswith(ZSTD_MAGIC):
        return "zstd"
    return ""
