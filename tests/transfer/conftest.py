"""Fixtures for server-side pulls: a loopback docker-registry filled by skopeo with images built
by ``ctrpy.testimage``, and one ctrpyd per module (tests keep apart by namespace: with content
isolated between namespaces, a namespace holds only the blobs it was given, so a fresh one pulls
everything again).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ctrpy.images import mediatypes
from ctrpy.images.model import sha256_digest
from ctrpy.images.platforms import default_spec
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image, multilayer_image
from ctrpy.testimage.model import ImageInfo
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, skopeo_copy

REPO = Path(__file__).resolve().parents[2]
CTRPY = str(REPO / ".venv" / "bin" / "ctrpy")
USER = ("alice", "s3cret-pw")
OTHER_ARCH = "arm64" if default_spec().architecture != "arm64" else "amd64"

if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
    pytest.skip("docker-registry and skopeo are needed (scripts/bootstrap --dev installs them)",
                allow_module_level=True)


@dataclass(frozen=True)
class Filled:
    """A plain-HTTP registry holding busybox at library/busybox:1 and a two-platform index at
    library/multi:latest (this machine's busybox and one for ``OTHER_ARCH``)."""

    registry: LocalRegistry
    busybox: ImageInfo
    index_digest: str
    native: ImageInfo
    other: ImageInfo
    busybox_archive: str  # the OCI archive busybox was pushed from (to push it elsewhere)
    multilayer: ImageInfo  # three layers, at library/multilayer:1

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def port(self) -> int:
        return self.registry.port


@pytest.fixture(scope="session")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    work = tmp_path_factory.mktemp("transfer-registry")
    with LocalRegistry(work / "registry") as registry:
        host = registry.host
        busybox = write_archive(busybox_image(f"{host}/library/busybox:1"), work / "busybox.tar")
        skopeo_copy(work / "busybox.tar", f"{host}/library/busybox:1")
        infos = []
        for arch in (default_spec().architecture, OTHER_ARCH):
            image = replace(busybox_image(f"{host}/library/multi:{arch}"), architecture=arch, env=(f"ARCH={arch}",))
            infos.append(write_archive(image, work / f"multi-{arch}.tar"))
            skopeo_copy(work / f"multi-{arch}.tar", f"{host}/library/multi:{arch}")
        entries = [{"mediaType": mediatypes.OCI_MANIFEST, "digest": info.manifest_digest,
                    "size": info.manifest_size, "platform": {"architecture": arch, "os": "linux"}}
                   for info, arch in zip(infos, (default_spec().architecture, OTHER_ARCH), strict=True)]
        index = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                            "manifests": entries[::-1]}).encode()  # the other platform first
        registry.put_manifest("library/multi", "latest", index, mediatypes.OCI_INDEX)
        multilayer = write_archive(multilayer_image(f"{host}/library/multilayer:1"), work / "multilayer.tar")
        skopeo_copy(work / "multilayer.tar", f"{host}/library/multilayer:1")
        yield Filled(registry, busybox, sha256_digest(index), infos[0], infos[1], str(work / "busybox.tar"),
                     multilayer)


@pytest.fixture(scope="module")
def ctrpyd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One ctrpyd for the module, with a short registry stall timeout (for the stall test), and
    content isolated between namespaces, so that each test's fresh namespace downloads what it
    pulls (tests/transfer/test_sharing.py covers the default, shared policy)."""
    config = tmp_path_factory.mktemp("transfer-config") / "ctrpyd.toml"
    config.write_text("version = 1\n[transfer]\nstall_timeout = 3.0\nmax_concurrent_downloads = 2\n"
                      "[metadata]\ncontent_sharing_policy = \"isolated\"\n")
    instance = Daemon(extra_args=("--config", str(config)))
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
def namespace() -> str:
    """A namespace of the test's own in the module's daemon."""
    return f"t{secrets.token_hex(4)}"


def ctrpy(daemon: Daemon, namespace: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ctrpy CLI against ``daemon`` in ``namespace``; never raises on failure."""
    env = {**os.environ, "CTRPY_ADDRESS": str(daemon.address), "CTRPY_NAMESPACE": namespace}
    return subprocess.run([CTRPY, *args], capture_output=True, text=True, env=env, timeout=timeout,
                          stdin=subprocess.DEVNULL)
