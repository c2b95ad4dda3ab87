"""Pulls through ctrpyd from an HTTPS registry with a self-signed certificate: refused with a
clear certificate error until configuration says how to trust it, per request
(``--hosts-dir``) or daemon-wide (``[transfer] config_path``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrpy.images import store
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image
from ctrpy.testimage.model import ImageInfo
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, self_signed, skopeo_copy

from .conftest import Filled, ctrpy


@dataclass(frozen=True)
class TlsRegistry:
    registry: LocalRegistry
    certificate: Path  # its own CA
    busybox: ImageInfo

    @property
    def ref(self) -> str:
        return f"{self.registry.host}/library/busybox:1"


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRegistry]:
    """docker-registry over HTTPS with a self-signed certificate for 127.0.0.1, holding busybox."""
    work = tmp_path_factory.mktemp("tls-registry")
    certificate, key = self_signed(work / "certs")
    with LocalRegistry(work / "registry", tls=(certificate, key)) as registry:
        info = write_archive(busybox_image(f"{registry.host}/library/busybox:1"), work / "busybox.tar")
        skopeo_copy(work / "busybox.tar", f"{registry.host}/library/busybox:1")  # skopeo skips verification
        yield TlsRegistry(registry, certificate, info)


def _pulled(daemon: Daemon, namespace: str, tls: TlsRegistry) -> None:
    with daemon.client(namespace) as client:
        assert store.get(client, tls.ref).target.digest == tls.busybox.manifest_digest


def _host_dir(root: Path, host: str, underscored: bool) -> Path:
    """The directory for ``host`` under a hosts root, in either of containerd's spellings."""
    name, _, port = host.rpartition(":")
    directory = root / (f"{name}_{port}_" if underscored else host)
    directory.mkdir(parents=True)
    return directory


def test_untrusted_certificate_is_a_clear_error(ctrpyd: Daemon, namespace: str, tls_registry: TlsRegistry) -> None:
    result = ctrpy(ctrpyd, namespace, "images", "pull", tls_registry.ref)
    assert result.returncode != 0
    assert tls_registry.registry.host in result.stderr, result.stderr
    assert "certificate not trusted (self-signed certificate)" in result.stderr, result.stderr
    assert "hosts.toml" in result.stderr  # it says where the fix goes
    # --plain-http does not help (the registry speaks TLS) and does not turn verification off.
    plain = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", tls_registry.ref)
    assert plain.returncode != 0


def test_ca_in_hosts_toml(ctrpyd: Daemon, namespace: str, tls_registry: TlsRegistry, tmp_path: Path) -> None:
    """``ca`` relative to the host's directory, in the ``host:port`` spelling of its name."""
    directory = _host_dir(tmp_path / "certs.d", tls_registry.registry.host, underscored=False)
    shutil.copy(tls_registry.certificate, directory / "registry-ca.pem")
    (directory / "hosts.toml").write_text(f'server = "https://{tls_registry.registry.host}"\nca = "registry-ca.pem"\n')
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), tls_registry.ref)
    assert result.returncode == 0, result.stderr
    _pulled(ctrpyd, namespace, tls_registry)
    run = ctrpyd.ctr("run", "--rm", tls_registry.ref, f"c-{namespace}", "echo", "over tls", namespace=namespace)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "over tls"


def test_skip_verify_in_hosts_toml(ctrpyd: Daemon, namespace: str, tls_registry: TlsRegistry,
                                   tmp_path: Path) -> None:
    """``skip_verify`` on the server entry, in the ``host_port_`` spelling, no ``server`` key."""
    directory = _host_dir(tmp_path / "certs.d", tls_registry.registry.host, underscored=True)
    (directory / "hosts.toml").write_text("skip_verify = true\n")
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), tls_registry.ref)
    assert result.returncode == 0, result.stderr
    _pulled(ctrpyd, namespace, tls_registry)


def test_wrong_ca_is_still_refused(ctrpyd: Daemon, namespace: str, tls_registry: TlsRegistry,
                                   tmp_path: Path) -> None:
    other, _ = self_signed(tmp_path / "other")
    directory = _host_dir(tmp_path / "certs.d", tls_registry.registry.host, underscored=False)
    (directory / "hosts.toml").write_text(f'ca = "{other}"\n')
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--hosts-dir", str(tmp_path / "certs.d"), tls_registry.ref)
    assert result.returncode != 0
    assert "certificate not trusted" in result.stderr, result.stderr


def test_daemon_wide_config_path(tls_registry: TlsRegistry, tmp_path: Path) -> None:
    """``[transfer] config_path`` in ctrpyd's config, with Docker's layout (a ``*.crt`` CA and no
    hosts.toml): pulls need no flag at all."""
    hosts = tmp_path / "hosts"
    shutil.copy(tls_registry.certificate, _host_dir(hosts, tls_registry.registry.host, underscored=False) / "ca.crt")
    config = tmp_path / "ctrpyd.toml"
    config.write_text(f'version = 1\n[transfer]\nconfig_path = "{hosts}"\n')
    daemon = Daemon(extra_args=("--config", str(config)))
    try:
        daemon.start()
        result = ctrpy(daemon, "default", "images", "pull", tls_registry.ref)
        assert result.returncode == 0, result.stderr
        _pulled(daemon, "default", tls_registry)
        # A request's own --hosts-dir replaces the daemon's (an empty one: no CA, refused again).
        (tmp_path / "empty").mkdir()
        other = ctrpy(daemon, "other", "images", "pull", "--hosts-dir", str(tmp_path / "empty"), tls_registry.ref)
        assert other.returncode != 0 and "certificate not trusted" in other.stderr, other.stderr
    finally:
        daemon.cleanup()


def test_untrusted_mirror_is_passed_over(ctrpyd: Daemon, namespace: str, tls_registry: TlsRegistry,
                                         filled: Filled, tmp_path: Path) -> None:
    """A mirror whose certificate does not verify counts as a mirror that failed: the pull goes
    on to the next endpoint (here the plain-HTTP upstream), as containerd's resolver does."""
    hosts = tmp_path / "certs.d"
    (hosts / "registry.example").mkdir(parents=True)
    (hosts / "registry.example" / "hosts.toml").write_text(
        f'server = "http://{filled.host}"\n\n'
        f'[host."https://{tls_registry.registry.host}"]\n  capabilities = ["pull", "resolve"]\n')
    ref = "registry.example/library/busybox:1"
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--hosts-dir", str(hosts), ref)
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == filled.busybox.manifest_digest
