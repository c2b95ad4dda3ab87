"""Endpoint configuration in action: TLS with a CA from hosts.toml or skip_verify, headers and
override_path sent as configured, credentials from a docker config.json, and mirrors that are
down or refuse us passed over."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.manager.registry import DockerConfigCredentials, Remote, Session, UntrustedCertificate
from ctrpy.manager.registry.session import Options
from tests.registry.conftest import USER, Pushed, run
from tests.support.registry import LocalRegistry, Reply, scripted, self_signed, skopeo

FAST = Options(retries=1, backoff=0.02, max_backoff=0.05)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, Path, str]]:
    """An HTTPS registry with a self-signed certificate, holding busybox copied from the plain
    one; yields it, the certificate, and the repository."""
    work = tmp_path_factory.mktemp("tls-registry")
    cert, key = self_signed(work / "tls")
    with LocalRegistry(work / "registry", tls=(cert, key)) as registry:
        yield registry, cert, "library/busybox"


def hosts_toml(root: Path, host: str, text: str) -> Path:
    directory = root / host
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)
    return root


def test_tls_with_a_ca_from_hosts_toml(pushed: Pushed, tls_registry: tuple[LocalRegistry, Path, str],
                                       tmp_path: Path) -> None:
    registry, cert, repository = tls_registry
    skopeo("copy", "--quiet", "--src-tls-verify=false", "--dest-cert-dir", str(cert.parent),
           "--dest-tls-verify=false", f"docker://{pushed.host}/library/busybox:latest",
           f"docker://{registry.host}/{repository}:latest")
    ref = f"{registry.host}/{repository}:latest"
    with_ca = hosts_toml(tmp_path / "ca", registry.host, f'server = "https://{registry.host}"\nca = "{cert}"\n')
    skipping = hosts_toml(tmp_path / "skip", registry.host, f'server = "https://{registry.host}"\nskip_verify = true\n')

    async def scenario() -> None:
        async with Session(FAST) as session:
            for config in (with_ca, skipping):
                resolved = await Remote(session, config_path=config).resolve(ref)
                assert resolved.descriptor.digest == pushed.busybox.manifest_digest
                assert resolved.endpoint.scheme == "https"
            # Without the CA the certificate is refused (at once: no retry), and the error says
            # where and what to configure.
            with pytest.raises(UntrustedCertificate,
                               match=f"registry {registry.host}: .*certificate not trusted .*hosts.toml"):
                await Remote(session).resolve(ref)
            # plain_http does not apply to a host configured for https.
            assert (await Remote(session, config_path=with_ca, plain_http=True).resolve(ref)).endpoint.scheme == "https"

    run(scenario)


def test_headers_and_override_path_are_sent(tmp_path: Path) -> None:
    with scripted(lambda request: Reply(404)) as server:
        config = hosts_toml(tmp_path, "upstream.example", (
            f'server = "http://{server.host}/custom/root"\noverride_path = true\n'
            'header = { x-token = "abc", x-multi = ["1", "2"] }\n'))

        async def scenario() -> None:
            async with Session(FAST) as session:
                with pytest.raises(Exception, match="not found"):
                    await Remote(session, config_path=config).resolve("upstream.example/a/b:v1")

        run(scenario)
    request = server.requests[0]
    # A server other than the name itself is told which registry is meant.
    assert request.path == "/custom/root/a/b/manifests/v1?ns=upstream.example"
    assert request.headers["x-token"] == "abc"
    assert request.headers["x-multi"] == "1, 2"


def test_mirrors_that_are_down_or_refuse_are_passed_over(pushed: Pushed, tmp_path: Path) -> None:
    with scripted(lambda request: Reply(401, {"WWW-Authenticate": 'Basic realm="x"'})) as refusing, \
            scripted(lambda request: Reply(503)) as failing:
        config = hosts_toml(tmp_path, "mirrored.example", (
            f'server = "http://{pushed.host}"\n\n'
            f'[host."http://{refusing.host}"]\n\n[host."http://{failing.host}"]\n'))

        async def scenario() -> None:
            async with Session(FAST) as session:
                resolved = await Remote(session, config_path=config).resolve("mirrored.example/library/busybox:latest")
                assert resolved.endpoint.host == pushed.host

        run(scenario)
    assert refusing.requests and failing.requests


def test_credentials_from_a_docker_config_json(auth_registry: tuple[LocalRegistry, object], tmp_path: Path) -> None:
    registry, _ = auth_registry
    path = tmp_path / "config.json"
    auth = base64.b64encode(":".join(USER).encode()).decode()
    path.write_text(json.dumps({"auths": {f"http://{registry.host}": {"auth": auth}}}))

    async def scenario() -> None:
        async with Session(FAST) as session:
            remote = Remote(session, plain_http=True, credentials=DockerConfigCredentials.load(path))
            resolved = await remote.resolve(f"{registry.host}/private/busybox:latest")
            assert resolved.descriptor.size > 0

    run(scenario)
