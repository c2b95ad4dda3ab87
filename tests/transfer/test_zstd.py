"""Images whose layers are ``application/vnd.oci.image.layer.v1.tar+zstd``, pulled through
ctrpyd's Transfer service and run or mounted with the stock ctr.

skopeo recompresses the project's test images with zstd on the way into a registry of the
module's own (into one that holds the gzip blobs already, skopeo would reuse those), so the layer
blobs differ from the gzip ones while the diff IDs (and so the chain IDs and the unpacked trees)
must come out the same.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrpy.images import content, mediatypes, snapshots, store
from ctrpy.testimage import diff_trees, expected_tree, scan_tree
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image, multilayer_image
from ctrpy.testimage.model import ImageInfo
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, skopeo, skopeo_inspect_raw

from .conftest import ctrpy

ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _push_zstd(host: str, archive: Path, target: str) -> list[str]:
    """Copy an OCI archive into the registry with zstd layers; returns the layer digests."""
    skopeo("copy", "--quiet", "--dest-tls-verify=false", "--dest-compress-format", "zstd",
           f"oci-archive:{archive}", f"docker://{host}/{target}")
    manifest = json.loads(skopeo_inspect_raw(f"{host}/{target}"))
    assert manifest["mediaType"] == mediatypes.OCI_MANIFEST
    assert [layer["mediaType"] for layer in manifest["layers"]] == [ZSTD_LAYER] * len(manifest["layers"])
    return [layer["digest"] for layer in manifest["layers"]]


@dataclass(frozen=True)
class ZstdImages:
    """A registry holding busybox and the multi-layer image at ``zstd/<name>:1``, with what
    each was built as and its zstd layer digests."""

    host: str
    images: dict[str, tuple[ImageInfo, list[str]]]

    def ref(self, name: str) -> str:
        return f"{self.host}/zstd/{name}:1"


@pytest.fixture(scope="module")
def zstd_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZstdImages]:
    work = tmp_path_factory.mktemp("zstd")
    with LocalRegistry(work / "registry") as registry:
        out: dict[str, tuple[ImageInfo, list[str]]] = {}
        for name, image in (("busybox", busybox_image), ("multilayer", multilayer_image)):
            info = write_archive(image(f"{registry.host}/zstd/{name}:1"), work / f"{name}.tar")
            out[name] = (info, _push_zstd(registry.host, work / f"{name}.tar", f"zstd/{name}:1"))
        yield ZstdImages(registry.host, out)


@pytest.fixture
def mountpoint(tmp_path: Path) -> Iterator[Path]:
    target = tmp_path / "mnt"
    target.mkdir()
    try:
        yield target
    finally:
        subprocess.run(["umount", "-R", str(target)], capture_output=True, check=False, timeout=60)


def test_zstd_busybox_runs(ctrpyd: Daemon, namespace: str, zstd_images: ZstdImages) -> None:
    info, blobs = zstd_images.images["busybox"]
    ref = zstd_images.ref("busybox")
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.media_type == mediatypes.OCI_MANIFEST
        blob = content.info(client, blobs[0])
        assert blob.labels["containerd.io/uncompressed"] == info.diff_ids[0]
        assert content.read_range(client, blobs[0], 0, 4) == ZSTD_MAGIC  # stored as sent, still zstd
        assert snapshots.stat(client, "overlayfs", info.chain_ids[-1]).name == info.chain_ids[-1]
    run = ctrpyd.ctr("run", "--rm", ref, f"c-{namespace}", "sh", "-c", "echo zstd; cat /etc/group",
                     namespace=namespace)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "zstd"
    assert "nobody:x:65534:" in run.stdout


def test_zstd_multilayer_unpacks_to_the_expected_tree(ctrpyd: Daemon, namespace: str, zstd_images: ZstdImages,
                                                      mountpoint: Path) -> None:
    info, blobs = zstd_images.images["multilayer"]
    ref = zstd_images.ref("multilayer")
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(namespace) as client:
        for blob, diff_id in zip(blobs, info.diff_ids, strict=True):
            assert content.info(client, blob).labels["containerd.io/uncompressed"] == diff_id
        for chain_id in info.chain_ids:  # every layer's snapshot, by the gzip image's chain ids
            snapshots.stat(client, "overlayfs", chain_id)

    mounted = ctrpyd.ctr("images", "mount", ref, str(mountpoint), namespace=namespace)
    assert mounted.returncode == 0, mounted.stderr
    try:
        assert diff_trees(expected_tree(multilayer_image(ref)), scan_tree(mountpoint)) == []
    finally:
        unmounted = ctrpyd.ctr("images", "unmount", "--rm", str(mountpoint), namespace=namespace)
        assert unmounted.returncode == 0, unmounted.stderr
