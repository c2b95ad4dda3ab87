"""Archives for the import tests: good ones from :mod:`ctrpy.testimage`, and broken or
multi-platform ones made from them."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

from ctrpy.testimage import Image, RawLayer, busybox_image, layer_blob, write_oci_layout_tar
from ctrpy.testimage.model import Layer

INDEX = "application/vnd.oci.image.index.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def members(path: Path) -> dict[str, bytes]:
    """Every regular member of a tar, by name."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                out[member.name] = extracted.read()
    return out


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    """A plain tar of ``files`` (in the order given)."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def for_arch(image: Image, architecture: str) -> Image:
    return dataclasses.replace(image, architecture=architecture)


def foreign_arch(host: str) -> str:
    """An architecture the host cannot run (and that containerd will not match)."""
    return "s390x" if host != "s390x" else "ppc64le"


def wrong_diff_id_image(name: str = "docker.io/library/baddiff:latest") -> Image:
    """Busybox whose config claims a diff_id its layer does not have."""
    layer = busybox_image().layers[0]
    assert isinstance(layer, Layer)
    blob, info = layer_blob(layer)
    bogus = "sha256:" + "0" * 64
    return dataclasses.replace(busybox_image(name), layers=(RawLayer(blob, bogus, info.uncompressed_size),))


def multi_platform_archive(images: list[Image], name: str, path: Path, scratch: Path) -> dict[str, str]:
    """An OCI layout whose index.json names one nested image index with a manifest per image
    (each with its platform). Returns ``{architecture: manifest digest}`` and ``"index"``."""
    blobs: dict[str, bytes] = {}
    entries = []
    found = {}
    for i, image in enumerate(images):
        single = scratch / f"single-{i}.tar"
        write_oci_layout_tar(image, single)
        files = members(single)
        top = json.loads(files["index.json"])["manifests"][0]
        entries.append({"mediaType": top["mediaType"], "digest": top["digest"], "size": top["size"],
                        "platform": top["platform"]})
        found[image.architecture] = top["digest"]
        blobs.update({k: v for k, v in files.items() if k.startswith("blobs/")})
    index = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": entries}).encode()
    blobs[blob_name(_digest(index))] = index
    top_index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": INDEX, "digest": _digest(index), "size": len(index),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]},
    }]}).encode()
    write_tar(path, {**blobs, "index.json": top_index, "oci-layout": b'{"imageLayoutVersion":"1.0.0"}'})
    found["index"] = _digest(index)
    return found
