"""Fixtures for the registry client: real docker-registry instances on loopback, filled by skopeo
with images built by ``ctrpy.testimage``.

The plain registry and its images are made once per session (starting a registry and pushing
takes about a second); tests must not delete from it. The htpasswd registry is per module.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import pytest

from ctrpy.images import mediatypes
from ctrpy.images.model import sha256_digest
from ctrpy.images.platforms import default_spec
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image, multilayer_image
from ctrpy.testimage.model import ImageInfo
from tests.support.registry import LocalRegistry, skopeo_copy

USER = ("alice", "s3cret-pw")
OTHER_ARCH = "arm64" if default_spec().architecture != "arm64" else "amd64"

T = TypeVar("T")

if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
    pytest.skip("docker-registry and skopeo are needed (scripts/bootstrap --dev installs them)",
                allow_module_level=True)


def run(coroutine: Callable[[], Awaitable[T]] | Awaitable[T], timeout: float = 60) -> T:
    """Run a coroutine to completion with a generous liveness bound."""
    awaitable = coroutine() if callable(coroutine) else coroutine

    async def bounded() -> T:
        return await asyncio.wait_for(awaitable, timeout)

    return asyncio.run(bounded())


@dataclass(frozen=True)
class Pushed:
    """What the session registry holds: a host and, per repository:tag, what was pushed."""

    registry: LocalRegistry
    busybox: ImageInfo          # OCI manifest at library/busybox:latest
    multilayer: ImageInfo       # Docker schema 2 at library/multilayer:v2s2 (digest from the registry)
    multilayer_digest: str
    index_digest: str           # OCI index at library/multi:latest: host platform + OTHER_ARCH
    native_manifest: str        # the manifest of the host's platform in that index
    other_manifest: str
    busybox_archive: str        # the OCI archive busybox was pushed from

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="session")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    """A plain-HTTP registry filled with: busybox (OCI), multilayer (Docker schema 2), and a
    two-platform OCI index (busybox for this machine and for another architecture)."""
    work = tmp_path_factory.mktemp("registry")
    with LocalRegistry(work / "registry") as registry:
        host = registry.host
        busybox = write_archive(busybox_image(f"{host}/library/busybox:latest"), work / "busybox.tar")
        skopeo_copy(work / "busybox.tar", f"{host}/library/busybox:latest")

        multilayer = write_archive(multilayer_image(f"{host}/library/multilayer:v2s2"), work / "multi.tar",
                                   fmt="docker")
        skopeo_copy(work / "multi.tar", f"{host}/library/multilayer:v2s2", fmt="docker", dest_format="v2s2")
        status, headers, _ = registry.get("library/multilayer/manifests/v2s2", mediatypes.DOCKER_MANIFEST)
        assert status == 200
        multilayer_digest = headers["docker-content-digest"]

        entries = []
        for arch in (default_spec().architecture, OTHER_ARCH):
            image = replace(busybox_image(f"{host}/library/multi:{arch}"), architecture=arch,
                            env=(f"ARCH={arch}",))
            info = write_archive(image, work / f"multi-{arch}.tar")
            skopeo_copy(work / f"multi-{arch}.tar", f"{host}/library/multi:{arch}")
            entries.append({"mediaType": mediatypes.OCI_MANIFEST, "digest": info.manifest_digest,
                            "size": info.manifest_size, "platform": {"architecture": arch, "os": "linux"}})
        # Another platform first, so that choosing the first entry would be wrong.
        index = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX,
                            "manifests": entries[::-1]}).encode()
        registry.put_manifest("library/multi", "latest", index, mediatypes.OCI_INDEX)
        yield Pushed(registry, busybox, multilayer, multilayer_digest, sha256_digest(index),
                     str(entries[0]["digest"]), str(entries[1]["digest"]), str(work / "busybox.tar"))


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, ImageInfo]]:
    """A registry with htpasswd basic auth (user ``USER``) holding busybox at private/busybox."""
    work = tmp_path_factory.mktemp("auth-registry")
    with LocalRegistry(work / "registry", htpasswd=USER) as registry:
        info = write_archive(busybox_image(f"{registry.host}/private/busybox:latest"), work / "busybox.tar")
        skopeo_copy(work / "busybox.tar", f"{registry.host}/private/busybox:latest", creds=USER)
        yield registry, info


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry of the test's own (for pushes, kills and restarts)."""
    with LocalRegistry(tmp_path / "registry") as registry:
        yield registry
