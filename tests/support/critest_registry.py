"""critest's images (``ctrpy.testimage.critest``) in a loopback registry, and a hosts directory
whose hosts.toml files send critest's upstream registries there.

Plain Python, like ``tests.support.registry``: the ``scripts/critest-run`` session script uses it
as well as the tests::

    with critest_registry(work, HostTools(busybox="/bin/busybox")) as served:
        # served.hosts_dir: a containerd-style hosts directory (config_path)
        # served.infos["registry.k8s.io/pause:3.9"]: what was pushed under that name

Each name keeps its upstream repository path (``registry.k8s.io/e2e-test-images/busybox:1.29-2``
is ``127.0.0.1:PORT/e2e-test-images/busybox:1.29-2``). Every hosts.toml has a closed loopback
port as its ``server``, so a pull the mirror cannot answer fails instead of leaving the machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ctrpy.pause.elf import pause_executable
from ctrpy.pause.image import pause_image
from ctrpy.testimage.archive import write_oci_layout_tar
from ctrpy.testimage.critest import UPSTREAM_HOSTS, CritestImage, HostTools, critest_images, repository_path
from ctrpy.testimage.model import ImageInfo
from tests.support.registry import LocalRegistry, skopeo_copy

#: The sandbox image a reference containerd is given: ctrpy's own pause image, which ctrpyd
#: uses under this name by default, so both daemons run the same pause with an id of its own.
SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"
#: A loopback port nothing listens on (the discard service, never started here).
CLOSED_SERVER = "http://127.0.0.1:9"
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True)
class ServedImages:
    """The registry, the hosts directory that mirrors the upstream hosts to it, what each
    upstream name was built as (``infos``) and the manifest digest the registry serves for it
    (``digests``: skopeo gzips an uncompressed layer, so this may differ from the built one)."""

    registry: LocalRegistry
    hosts_dir: Path
    images: tuple[CritestImage, ...]
    infos: dict[str, ImageInfo]
    digests: dict[str, str]

    def local(self, name: str) -> str:
        """The registry's own reference for an upstream ``name``."""
        return f"{self.registry.host}/{repository_path(name)}"


def write_hosts_dir(directory: Path, mirror: str, hosts: tuple[str, ...] = UPSTREAM_HOSTS) -> Path:
    """``<directory>/<host>/hosts.toml`` for each of ``hosts``: pull and resolve through
    ``http://<mirror>``, and a closed loopback port as the server. Returns ``directory``."""
    for host in hosts:
        (directory / host).mkdir(parents=True, exist_ok=True)
        (directory / host / "hosts.toml").write_text(
            f'server = "{CLOSED_SERVER}"\n\n'
            f'[host."http://{mirror}"]\n'
            '  capabilities = ["pull", "resolve"]\n')
    return directory


def served_digest(registry: LocalRegistry, name: str) -> str:
    """The manifest digest ``registry`` answers for the upstream ``name``."""
    repository, _, tag = repository_path(name).rpartition(":")
    status, headers, _ = registry.get(f"{repository}/manifests/{tag}", accept=MANIFEST_TYPES)
    if status != 200:
        raise RuntimeError(f"{name}: the registry answers {status}")
    return headers["docker-content-digest"]


def push_images(registry: LocalRegistry, images: list[CritestImage], work: Path) -> dict[str, ImageInfo]:
    """Write each image as an OCI archive under ``work`` and copy it to the registry under
    every one of its names; returns what was written, by upstream name."""
    infos: dict[str, ImageInfo] = {}
    work.mkdir(parents=True, exist_ok=True)
    for index, item in enumerate(images):
        archive = work / f"image-{index:02d}.tar"
        info = write_oci_layout_tar(item.image, archive)
        for name in item.names:
            skopeo_copy(archive, f"{registry.host}/{repository_path(name)}")
            infos[name] = info
        archive.unlink()
    return infos


def sandbox_image() -> CritestImage:
    """ctrpy's pause image under :data:`SANDBOX_IMAGE`."""
    return CritestImage(pause_image(SANDBOX_IMAGE), (SANDBOX_IMAGE,))


@contextlib.contextmanager
def critest_registry(work: Path, tools: HostTools, *, only: tuple[str, ...] = ()) -> Iterator[ServedImages]:
    """A LocalRegistry under ``work`` holding critest's images (those with a name in ``only``
    when given) and :data:`SANDBOX_IMAGE`, and a hosts directory for it; stopped on exit."""
    images = critest_images(tools, pause_executable())
    if only:
        images = [item for item in images if set(item.names) & set(only)]
    images.append(sandbox_image())
    with LocalRegistry(work / "registry") as registry:
        infos = push_images(registry, images, work / "archives")
        hosts_dir = write_hosts_dir(work / "certs.d", registry.host)
        digests = {name: served_digest(registry, name) for name in infos}
        yield ServedImages(registry, hosts_dir, tuple(images), infos, digests)
