"""Turning a ``docker save`` archive into OCI-style content, exactly as containerd does.

containerd's importer writes, for each ``manifest.json`` entry, a Docker schema 2 manifest
(config media type ``application/vnd.docker.container.image.v1+json``; each layer
``...rootfs.diff.tar`` or ``...rootfs.diff.tar.gzip`` by its first bytes, or a compressed blob
already stored with a ``containerd.io/uncompressed`` label for it), then an OCI index with one
entry per RepoTag, annotated with the normalised name and its tag, and the platform read from
the config. The JSON is written byte for byte as Go writes it, so importing the same archive
into ctrpyd and containerd gives the same digests.
"""

from __future__ import annotations

import io

from ctrpy import errors
from ctrpy.client import Client
from ctrpy.images import content, gojson, mediatypes, platforms, reference
from ctrpy.images.archive import Archive, Blob, DockerManifest
from ctrpy.images.model import Descriptor, Platform, parse_config, sha256_digest

UNCOMPRESSED_LABEL = "containerd.io/uncompressed"


def write_document(client: Client, data: bytes, media_type: str) -> Descriptor:
    """Store a JSON document the importer made (ingest ``manifest-<digest>``) and describe it."""
    digest = sha256_digest(data)
    content.write_blob(client, "manifest-" + digest, io.BytesIO(data), len(data), digest)
    return Descriptor(media_type, digest, len(data))


def _layer_media_type(client: Client, digest: str, size: int) -> str:
    header = content.read_range(client, digest, 0, min(size, 10)) if size else b""
    if not header or mediatypes.compression_of(header) == "":
        return mediatypes.DOCKER_LAYER
    return mediatypes.DOCKER_LAYER_GZIP  # containerd says gzip for any compression


def _resolve_layers(client: Client, entry: DockerManifest, blobs: dict[str, Blob]) -> list[Descriptor]:
    layers: list[Blob] = []
    for name in entry.layers:
        if name not in blobs:
            raise errors.InvalidArgument(f"failed to resolve layers: layer {name!r} not found")
        layers.append(blobs[name])
    # A compressed copy stored earlier for an uncompressed layer is used instead (containerd).
    replacement: dict[str, tuple[str, int]] = {}
    if layers:
        filters = [f'labels."{UNCOMPRESSED_LABEL}"=={blob.digest}' for blob in layers]
        for found in content.list_content(client, filters):
            original = found.labels.get(UNCOMPRESSED_LABEL, "")
            if any(blob.digest == original for blob in layers):
                replacement[original] = (found.digest, found.size)
    out = []
    for blob in layers:
        digest, size = replacement.get(blob.digest, (blob.digest, blob.size))
        out.append(Descriptor(_layer_media_type(client, digest, size), digest, size))
    return out


def _platform(client: Client, config: Descriptor) -> Platform:
    parsed = parse_config(content.read_blob(client, config), f"config {config.digest}")
    return platforms.normalize(Platform(parsed.os, parsed.architecture))


def convert(client: Client, archive: Archive) -> Descriptor:
    """Write the manifests and the index for a Docker archive; return the index descriptor.

    Raises InvalidArgument when ``manifest.json`` names a config, layer or symlink target the
    archive does not hold, or a RepoTag that is not a valid reference.
    """
    assert archive.docker_manifests is not None
    blobs = dict(archive.blobs)
    for name, target in archive.symlinks.items():
        if target not in blobs:
            raise errors.InvalidArgument(f"no target for symlink layer from {name!r} to {target!r}")
        blobs[name] = blobs[target]
    entries: list[Descriptor] = []
    for entry in archive.docker_manifests:
        if entry.config not in blobs:
            raise errors.InvalidArgument(f"image config {entry.config!r} not found")
        found = blobs[entry.config]
        config = Descriptor(mediatypes.DOCKER_CONFIG, found.digest, found.size)
        layers = _resolve_layers(client, entry, blobs)
        manifest = gojson.dumps({
            "schemaVersion": 2,
            "mediaType": mediatypes.DOCKER_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        })
        desc = write_document(client, manifest, mediatypes.DOCKER_MANIFEST)
        desc = Descriptor(desc.media_type, desc.digest, desc.size, platform=_platform(client, config))
        if not entry.repo_tags:
            entries.append(desc)
        for tag in entry.repo_tags:
            try:
                name = reference.normalize(tag)
            except errors.InvalidArgument as exc:
                raise errors.InvalidArgument(f"normalize image ref {tag!r}: {exc.message}") from None
            entries.append(desc.with_annotations({
                mediatypes.ANNOTATION_IMAGE_NAME: name,
                mediatypes.ANNOTATION_REF_NAME: reference.oci_ref_name(name),
            }))
    index = gojson.dumps({"schemaVersion": 2, "manifests": [e.to_json() for e in entries] if entries else None})
    return write_document(client, index, mediatypes.OCI_INDEX)
