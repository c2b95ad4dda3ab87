"""Pull and push through ctrpyd against docker-registry's own token auth (``auth: token``).

The registry verifies every bearer token itself (signature chain, issuer, audience, expiry and
the access it grants), so these tests show that the tokens the daemon fetches and the scopes it
asks for are what a real registry demands, not what a scripted front happens to accept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ctrpy import errors
from ctrpy.images import store
from ctrpy.images.model import sha256_digest
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image
from ctrpy.testimage.model import ImageInfo
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, self_signed, skopeo_copy, skopeo_inspect_raw
from tests.support.token_issuer import TokenIssuer

from .conftest import USER, ctrpy

REPOSITORY = "private/busybox"


@dataclass(frozen=True)
class TokenRegistry:
    registry: LocalRegistry
    issuer: TokenIssuer
    busybox: ImageInfo

    @property
    def ref(self) -> str:
        return f"{self.registry.host}/{REPOSITORY}:1"


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    """A registry behind its own token auth, trusting a test issuer that knows ``USER``; busybox
    at private/busybox:1 (pushed by skopeo, which goes through the same token flow)."""
    work = tmp_path_factory.mktemp("token-registry")
    with TokenIssuer(work / "issuer", {USER[0]: USER[1]}) as issuer, \
            LocalRegistry(work / "registry", token=issuer.auth()) as registry:
        info = write_archive(busybox_image(f"{registry.host}/{REPOSITORY}:1"), work / "busybox.tar")
        skopeo_copy(work / "busybox.tar", f"{registry.host}/{REPOSITORY}:1", creds=USER)
        yield TokenRegistry(registry, issuer, info)


def _user(password: str = USER[1]) -> tuple[str, str]:
    return ("--user", f"{USER[0]}:{password}")


def _no_image(daemon: Daemon, namespace: str, ref: str) -> bool:
    with daemon.client(namespace) as client:
        try:
            store.get(client, ref)
        except errors.NotFound:
            return True
    return False


def test_pull_with_user_then_ctr_run(ctrpyd: Daemon, namespace: str, token_registry: TokenRegistry) -> None:
    issuer = token_registry.issuer
    issuer.requests.clear()
    ref = token_registry.ref
    result = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", *_user(), ref)
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == token_registry.busybox.manifest_digest
    # One token for the repository's pull scope serves the manifest, the config and the layer.
    assert issuer.scopes_issued(USER[0]) == [(f"repository:{REPOSITORY}:pull",)]
    assert len(issuer.requests) == 1

    run = ctrpyd.ctr("run", "--rm", ref, f"c-{namespace}", "echo", "behind tokens", namespace=namespace)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "behind tokens"


def test_wrong_or_no_credentials_name_the_host(ctrpyd: Daemon, namespace: str,
                                               token_registry: TokenRegistry) -> None:
    ref, host = token_registry.ref, token_registry.registry.host
    wrong = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", *_user("not-the-password"), ref)
    assert wrong.returncode != 0
    assert host in wrong.stderr and repr(USER[0]) in wrong.stderr, wrong.stderr
    assert "401" in wrong.stderr, wrong.stderr
    # Anonymous: the issuer hands out a token without access, which the registry refuses.
    anonymous = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", ref)
    assert anonymous.returncode != 0
    assert host in anonymous.stderr and "anonymously" in anonymous.stderr, anonymous.stderr
    assert _no_image(ctrpyd, namespace, ref)


def test_push_with_user(ctrpyd: Daemon, namespace: str, token_registry: TokenRegistry) -> None:
    issuer, host = token_registry.issuer, token_registry.registry.host
    source = token_registry.ref
    pulled = ctrpy(ctrpyd, namespace, "images", "pull", "--plain-http", *_user(), source)
    assert pulled.returncode == 0, pulled.stderr

    target = f"{host}/pushed/{namespace}:1"
    denied = ctrpy(ctrpyd, namespace, "images", "push", "--plain-http", *_user("nope"), target, source)
    assert denied.returncode != 0 and host in denied.stderr, denied.stderr

    issuer.requests.clear()
    pushed = ctrpy(ctrpyd, namespace, "images", "push", "--plain-http", *_user(), target, source)
    assert pushed.returncode == 0, pushed.stderr
    # Two tokens for the whole push, though config and layer go up concurrently: one for the
    # target (pull,push: what the registry's challenges to the HEADs and the manifest PUT add is
    # merged into it), one for the cross-repository mounts (which also read the source).
    assert sorted(issuer.scopes_issued(USER[0])) == [
        (f"repository:{REPOSITORY}:pull", f"repository:pushed/{namespace}:pull,push"),
        (f"repository:pushed/{namespace}:pull,push",),
    ]

    raw = skopeo_inspect_raw(target, creds=USER)
    assert sha256_digest(raw) == token_registry.busybox.manifest_digest


def test_https_registry_and_realm_trusted_through_hosts_toml(ctrpyd: Daemon, namespace: str, tmp_path: Path) -> None:
    """Registry and token realm both on HTTPS under a private CA: the ``ca`` of the registry's
    hosts.toml serves for its realm too (as in containerd, the realm is reached with the host's
    TLS settings)."""
    certificate, key = self_signed(tmp_path / "certs")
    with TokenIssuer(tmp_path / "issuer", {USER[0]: USER[1]}, tls=(certificate, key)) as issuer, \
            LocalRegistry(tmp_path / "registry", tls=(certificate, key), token=issuer.auth()) as registry:
        assert issuer.realm.startswith("https://")
        ref = f"{registry.host}/{REPOSITORY}:1"
        info = write_archive(busybox_image(ref), tmp_path / "busybox.tar")
        skopeo_copy(tmp_path / "busybox.tar", ref, creds=USER)
        hosts = tmp_path / "certs.d"
        (hosts / registry.host).mkdir(parents=True)
        (hosts / registry.host / "hosts.toml").write_text(f'ca = "{certificate}"\n')
        issuer.requests.clear()
        result = ctrpy(ctrpyd, namespace, "images", "pull", "--hosts-dir", str(hosts), *_user(), ref)
        assert result.returncode == 0, result.stderr
        assert issuer.scopes_issued(USER[0]) == [(f"repository:{REPOSITORY}:pull",)]
    with ctrpyd.client(namespace) as client:
        assert store.get(client, ref).target.digest == info.manifest_digest
