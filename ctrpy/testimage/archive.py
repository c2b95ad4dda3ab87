"""Write an :class:`Image` as an OCI image layout tar or as a ``docker save`` archive.

OCI layout tar::

    blobs/sha256/<hex>   config, manifest and gzip layers
    index.json           one manifest descriptor, annotated with the tag
                         (org.opencontainers.image.ref.name) and the full name
                         (io.containerd.image.name)
    oci-layout           {"imageLayoutVersion": "1.0.0"}

Docker archive (the classic ``docker save`` format)::

    <id>/VERSION, <id>/json, <id>/layer.tar   one directory per layer, plain tar
    <config hex>.json                          the image config
    manifest.json                              [{"Config", "RepoTags", "Layers"}]
    repositories                               {repo: {tag: top layer id}}

Members are sorted within each group, carry a fixed mtime, and JSON is written with sorted keys,
so building the same image twice gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO

from ctrpy.testimage.layers import write_layer
from ctrpy.testimage.model import (
    CREATED,
    EPOCH,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Image,
    ImageInfo,
    Layer,
    LayerInfo,
    RawLayer,
    chain_ids,
)

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_config(image: Image, diff_ids: tuple[str, ...]) -> bytes:
    """The image config JSON for ``image`` whose layers have ``diff_ids``."""
    config: dict[str, object] = {"Env": list(image.env)}
    if image.cmd:
        config["Cmd"] = list(image.cmd)
    if image.entrypoint:
        config["Entrypoint"] = list(image.entrypoint)
    if image.working_dir:
        config["WorkingDir"] = image.working_dir
    if image.user:
        config["User"] = image.user
    if image.labels:
        config["Labels"] = dict(image.labels)
    return _json({
        "architecture": image.architecture,
        "os": image.os,
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": CREATED, "created_by": f"ctrpy.testimage layer {i}"}
                    for i in range(len(diff_ids))],
    })


def familiar_name(name: str) -> str:
    """Docker's short spelling: ``docker.io/library/busybox:latest`` -> ``busybox:latest``."""
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


class _Members:
    """Adds deterministic members to an outer tar."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self._tar = tar

    def _info(self, name: str, kind: bytes, size: int, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.size = size
        info.mode = mode
        info.mtime = EPOCH
        info.uname = info.gname = ""
        return info

    def directory(self, name: str) -> None:
        self._tar.addfile(self._info(name, tarfile.DIRTYPE, 0, 0o755))

    def data(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, tarfile.REGTYPE, len(data), 0o644), io.BytesIO(data))

    def stream(self, name: str, fileobj: IO[bytes], size: int) -> None:
        fileobj.seek(0)
        self._tar.addfile(self._info(name, tarfile.REGTYPE, size, 0o644), fileobj)


def _build_layers(image: Image, stack: contextlib.ExitStack, scratch: Path,
                  compress: bool) -> list[tuple[LayerInfo, IO[bytes]]]:
    """Build every layer into a scratch file; return each one's info and open file."""
    built: list[tuple[LayerInfo, IO[bytes]]] = []
    for layer in image.layers:
        # The stack closes it once the archive is written.
        out: IO[bytes] = stack.enter_context(tempfile.TemporaryFile(dir=scratch))  # noqa: SIM115
        if isinstance(layer, RawLayer):
            out.write(layer.blob)
            info = LayerInfo(layer.digest, len(layer.blob), layer.media_type, layer.diff_id,
                             layer.uncompressed_size)
        else:
            assert isinstance(layer, Layer)
            info = write_layer(layer, out, compress=compress)
        built.append((info, out))
    return built


@contextlib.contextmanager
def _atomic_tar(path: Path) -> Iterator[tarfile.TarFile]:
    """Open a tar at a temporary name beside ``path``; rename it into place on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; an archive is not a secret
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(
                fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            yield tar
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_oci_layout_tar(image: Image, path: str | os.PathLike[str]) -> ImageInfo:
    """Write ``image`` as an OCI image layout tar at ``path`` and describe what was written.

    Raises FileNotFoundError if the directory of ``path`` does not exist, ValueError if a layer
    entry cannot be encoded.
    """
    target = Path(path)
    with contextlib.ExitStack() as stack:
        built = _build_layers(image, stack, target.parent, compress=True)
        infos = tuple(info for info, _ in built)
        diff_ids = tuple(info.diff_id for info in infos)
        config = image_config(image, diff_ids)
        manifest = _json({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": {"mediaType": MEDIA_OCI_CONFIG, "digest": _digest(config),
                       "size": len(config)},
            "layers": [{"mediaType": i.media_type, "digest": i.digest, "size": i.size}
                       for i in infos],
        })
        index = _json({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [{
                "mediaType": MEDIA_OCI_MANIFEST,
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {ANNOTATION_IMAGE_NAME: image.name,
                                ANNOTATION_REF_NAME: image.tag},
                "platform": {"architecture": image.architecture, "os": image.os},
            }],
        })
        blobs: dict[str, tuple[IO[bytes] | bytes, int]] = {
            _digest(config): (config, len(config)),
            _digest(manifest): (manifest, len(manifest)),
        }
        for info, fileobj in built:
            blobs.setdefault(info.digest, (fileobj, info.size))
        with _atomic_tar(target) as tar:
            members = _Members(tar)
            members.directory("blobs")
            members.directory("blobs/sha256")
            for digest in sorted(blobs):
                name = "blobs/sha256/" + digest.split(":", 1)[1]
                content, size = blobs[digest]
                if isinstance(content, bytes):
                    members.data(name, content)
                else:
                    members.stream(name, content, size)
            members.data("index.json", index)
            members.data("oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    return ImageInfo(
        name=image.name, format="oci", archive_size=target.stat().st_size,
        config_digest=_digest(config), config_size=len(config), layers=infos,
        chain_ids=chain_ids(diff_ids), manifest_digest=_digest(manifest),
        manifest_size=len(manifest), manifest_media_type=MEDIA_OCI_MANIFEST)


def write_docker_archive(image: Image, path: str | os.PathLike[str]) -> ImageInfo:
    """Write ``image`` as a ``docker save`` archive (plain tar layers) at ``path``.

    The returned info has no manifest digest: the importer makes up the manifest. Raises as
    :func:`write_oci_layout_tar` does.
    """
    target = Path(path)
    with contextlib.ExitStack() as stack:
        built = _build_layers(image, stack, target.parent, compress=False)
        infos = tuple(info for info, _ in built)
        diff_ids = tuple(info.diff_id for info in infos)
        chains = chain_ids(diff_ids)
        config = image_config(image, diff_ids)
        config_name = _digest(config).split(":", 1)[1] + ".json"
        # Legacy v1 layer ids only need to be unique and stable; derive them from chain ids.
        ids = [hashlib.sha256(chain.encode()).hexdigest() for chain in chains]
        short = familiar_name(image.name)
        repo, tag = short.rsplit(":", 1)
        with _atomic_tar(target) as tar:
            members = _Members(tar)
            written: set[str] = set()
            for position, (info, fileobj) in enumerate(built):
                layer_id = ids[position]
                if layer_id in written:
                    continue
                written.add(layer_id)
                v1: dict[str, object] = {"id": layer_id, "created": CREATED}
                if position:
                    v1["parent"] = ids[position - 1]
                members.directory(layer_id)
                members.data(f"{layer_id}/VERSION", b"1.0")
                members.data(f"{layer_id}/json", _json(v1))
                members.stream(f"{layer_id}/layer.tar", fileobj, info.size)
            members.data(config_name, config)
            members.data("manifest.json", _json([{
                "Config": config_name,
                "RepoTags": [short],
                "Layers": [f"{layer_id}/layer.tar" for layer_id in ids],
            }]))
            members.data("repositories", _json({repo: {tag: ids[-1]}}) if ids else b"{}")
    return ImageInfo(
        name=image.name, format="docker", archive_size=target.stat().st_size,
        config_digest=_digest(config), config_size=len(config), layers=infos,
        chain_ids=chains)


def write_archive(image: Image, path: str | os.PathLike[str], fmt: str = "oci") -> ImageInfo:
    """Write ``image`` in format ``fmt`` ("oci" or "docker"); raises ValueError otherwise."""
    if fmt == "oci":
        return write_oci_layout_tar(image, path)
    if fmt == "docker":
        return write_docker_archive(image, path)
    raise ValueError(f"unknown archive format {fmt!r}: want oci or docker")


def read_member(archive: str | os.PathLike[str], name: str) -> bytes:
    """Return the bytes of member ``name`` of a tar archive; raises KeyError if absent."""
    with tarfile.open(archive) as tar:
        extracted: BinaryIO | None = tar.extractfile(name)  # type: ignore[assignment]
        if extracted is None:
            raise KeyError(name)
        return extracted.read()
