"""Fixtures for the CRI: one ctrpyd per module with a CNI configuration directory of its own,
and a loopback docker-registry (plain HTTP, as the CRI speaks to loopback hosts) holding test
images built by ``ctrpy.testimage``:

- ``library/busybox:1`` and ``library/busybox:same`` (one image under two tags),
- ``library/user-uid:1`` (USER 1002) and ``library/user-name:1`` (USER www-data:1004),

and a second registry with basic auth (``USER``) holding ``library/private:1``.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ctrpy.cri import CriClient
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image
from ctrpy.testimage.model import ImageInfo
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, skopeo_copy

USER = ("kube", "pull-secret-1")

if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
    pytest.skip("docker-registry and skopeo are needed (scripts/bootstrap --dev installs them)",
                allow_module_level=True)


@dataclass(frozen=True)
class Images:
    """The registries and what they hold."""

    registry: LocalRegistry
    private: LocalRegistry
    busybox: ImageInfo
    user_uid: ImageInfo
    user_name: ImageInfo
    private_image: ImageInfo
    busybox_archive: Path

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture(scope="session")
def cri_images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    work = tmp_path_factory.mktemp("cri-registry")
    with LocalRegistry(work / "registry") as registry, \
            LocalRegistry(work / "private", htpasswd=USER) as private:
        host = registry.host
        busybox = write_archive(busybox_image(f"{host}/library/busybox:1"), work / "busybox.tar")
        for tag in ("1", "same"):
            skopeo_copy(work / "busybox.tar", f"{host}/library/busybox:{tag}")
        users = {}
        for name, user in (("user-uid", "1002"), ("user-name", "www-data:1004")):
            image = replace(busybox_image(f"{host}/library/{name}:1"), user=user, env=(f"IMAGE={name}",))
            users[name] = write_archive(image, work / f"{name}.tar")
            skopeo_copy(work / f"{name}.tar", f"{host}/library/{name}:1")
        secret = replace(busybox_image(f"{private.host}/library/private:1"), env=("IMAGE=private",))
        private_info = write_archive(secret, work / "private.tar")
        skopeo_copy(work / "private.tar", f"{private.host}/library/private:1", creds=USER)
        yield Images(registry, private, busybox, users["user-uid"], users["user-name"], private_info,
                     work / "busybox.tar")


@dataclass
class CriDaemon:
    """A ctrpyd with the CRI on, and the CNI configuration directory it reads."""

    daemon: Daemon
    cni_conf_dir: Path

    def client(self, timeout: float = 120.0) -> CriClient:
        return CriClient(str(self.daemon.address), timeout)


#: A registry name that the daemon's hosts directory sends to the loopback registry (as critest's
#: images are served), with a closed loopback port as its server so nothing leaves the machine.
MIRRORED = "registry.k8s.io"


@pytest.fixture(scope="module")
def cri_daemon(tmp_path_factory: pytest.TempPathFactory, cri_images: Images) -> Iterator[CriDaemon]:
    """One ctrpyd for the module; its CNI conf dir starts empty (the network is not ready), and
    its ``[cri] registry_config_path`` mirrors ``MIRRORED`` to the loopback registry."""
    base = tmp_path_factory.mktemp("cri-daemon")
    conf_dir = base / "net.d"
    conf_dir.mkdir()
    hosts = base / "certs.d" / MIRRORED
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(f'server = "http://127.0.0.1:1"\n'
                                      f'[host."http://{cri_images.host}"]\ncapabilities = ["pull", "resolve"]\n')
    config = base / "ctrpyd.toml"
    config.write_text(f'version = 1\n[cri]\ncni_conf_dir = "{conf_dir}"\nstats_collect_period = 0\n'
                      f'registry_config_path = "{base / "certs.d"}"\n')
    instance = Daemon(extra_args=("--config", str(config)))
    try:
        instance.start()
        yield CriDaemon(instance, conf_dir)
    finally:
        instance.cleanup()


@pytest.fixture
def cri(cri_daemon: CriDaemon) -> Iterator[CriClient]:
    with cri_daemon.client() as client:
        yield client
