"""Credentials the daemon finds itself: ``[transfer] credentials_file`` (a docker config.json) for
requests that bring no auth stream, identity tokens (the OAuth refresh flow), credential
helpers (not run), and an auth stream asked per host (a mirror that challenges is asked for
under its own name, as containerd asks)."""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.api.containerd.types.transfer import imagestore_pb2, registry_pb2
from ctrpy.images import store
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image
from ctrpy.testimage.model import ImageInfo
from tests.support.ctrpyd import Daemon
from tests.support.registry import LocalRegistry, Reply, Request, forward, json_reply, scripted, skopeo_copy

from .conftest import USER, Filled, ctrpy
from .support import AuthRecorder, LogsReader, pull_with

REPOSITORY = "private/busybox"


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRegistry, ImageInfo]]:
    """A registry with basic auth (htpasswd) holding busybox at private/busybox:1."""
    work: Path = tmp_path_factory.mktemp("daemon-creds-registry")
    with LocalRegistry(work / "registry", htpasswd=USER) as registry:
        info = write_archive(busybox_image(f"{registry.host}/{REPOSITORY}:1"), work / "busybox.tar")
        skopeo_copy(work / "busybox.tar", f"{registry.host}/{REPOSITORY}:1", creds=USER)
        yield registry, info


@pytest.fixture(scope="module")
def credentials_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the module's daemon looks for its config.json (absent until a test writes it)."""
    return tmp_path_factory.mktemp("daemon-creds") / "config.json"


@pytest.fixture(scope="module")
def creds_daemon(tmp_path_factory: pytest.TempPathFactory, credentials_file: Path) -> Iterator[Daemon]:
    config = tmp_path_factory.mktemp("daemon-creds-config") / "ctrpyd.toml"
    config.write_text(f'version = 1\n[transfer]\ncredentials_file = "{credentials_file}"\n')
    daemon = Daemon(extra_args=("--config", str(config)))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def _write(path: Path, doc: object) -> None:
    """Replace the file at once (the daemon may read it any time)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    temporary.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    temporary.replace(path)


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _fresh() -> str:
    return f"t{secrets.token_hex(4)}"


def test_credentials_file_serves_requests_without_credentials(
        creds_daemon: Daemon, credentials_file: Path, auth_registry: tuple[LocalRegistry, ImageInfo]) -> None:
    registry, info = auth_registry
    ref = f"{registry.host}/{REPOSITORY}:1"
    credentials_file.unlink(missing_ok=True)
    anonymous = ctrpy(creds_daemon, _fresh(), "images", "pull", "--plain-http", ref)
    assert anonymous.returncode != 0 and registry.host in anonymous.stderr

    _write(credentials_file, {"auths": {registry.host: {"auth": _basic(*USER)}}})
    encoded = ctrpy(creds_daemon, namespace := _fresh(), "images", "pull", "--plain-http", ref)
    assert encoded.returncode == 0, encoded.stderr
    with creds_daemon.client(namespace) as client:
        assert store.get(client, ref).target.digest == info.manifest_digest

    # docker login's URL keys, and username/password instead of auth; read again after a change.
    _write(credentials_file, {"auths": {f"http://{registry.host}/v2/": {"username": USER[0], "password": USER[1]}}})
    split = ctrpy(creds_daemon, _fresh(), "images", "pull", "--plain-http", ref)
    assert split.returncode == 0, split.stderr

    _write(credentials_file, {"auths": {registry.host: {"auth": _basic(USER[0], "wrong")}}})
    wrong = ctrpy(creds_daemon, _fresh(), "images", "pull", "--plain-http", ref)
    assert wrong.returncode != 0
    assert registry.host in wrong.stderr and f"authentication failed as '{USER[0]}'" in wrong.stderr


def test_user_flag_wins_over_the_file(creds_daemon: Daemon, credentials_file: Path,
                                      auth_registry: tuple[LocalRegistry, ImageInfo]) -> None:
    """A request with an auth stream is answered by its client only (the file is for requests
    without one)."""
    registry, _ = auth_registry
    _write(credentials_file, {"auths": {registry.host: {"auth": _basic(USER[0], "wrong")}}})
    result = ctrpy(creds_daemon, _fresh(), "images", "pull", "--plain-http", "--user", ":".join(USER),
                   f"{registry.host}/{REPOSITORY}:1")
    assert result.returncode == 0, result.stderr


def test_credential_helpers_are_not_run(creds_daemon: Daemon, credentials_file: Path,
                                        auth_registry: tuple[LocalRegistry, ImageInfo]) -> None:
    registry, _ = auth_registry
    _write(credentials_file, {"auths": {registry.host: {}}, "credsStore": "ctrpy-test-store"})
    result = ctrpy(creds_daemon, _fresh(), "images", "pull", "--plain-http", f"{registry.host}/{REPOSITORY}:1")
    assert result.returncode != 0 and "authentication required" in result.stderr
    log = creds_daemon.log()
    assert "ctrpyd does not run credential helpers" in log and "docker-credential-ctrpy-test-store" in log


def test_malformed_file_is_a_clear_error(creds_daemon: Daemon, credentials_file: Path,
                                         auth_registry: tuple[LocalRegistry, ImageInfo]) -> None:
    registry, _ = auth_registry
    _write(credentials_file, "{not json")
    result = ctrpy(creds_daemon, _fresh(), "images", "pull", "--plain-http", f"{registry.host}/{REPOSITORY}:1")
    assert result.returncode != 0
    assert "credentials_file" in result.stderr and str(credentials_file) in result.stderr


def test_identity_token_is_a_refresh_token(creds_daemon: Daemon, credentials_file: Path, filled: Filled) -> None:
    """An ``identitytoken`` is sent to the token realm as containerd's OAuth form (POST,
    grant_type=refresh_token), and the token it returns opens the registry."""
    token = f"tok-{secrets.token_hex(4)}"
    forms: list[dict[str, list[str]]] = []
    realm: dict[str, str] = {}

    def handler(request: Request) -> Reply:
        if request.path == "/token":
            form = urllib.parse.parse_qs(request.body.decode())
            forms.append(form)
            if request.method == "POST" and form.get("grant_type") == ["refresh_token"] \
                    and form.get("refresh_token") == ["refresh-secret"]:
                return json_reply(200, {"access_token": token, "expires_in": 300})
            return json_reply(401, {"errors": [{"code": "UNAUTHORIZED"}]})
        if request.headers.get("authorization") != f"Bearer {token}":
            challenge = f'Bearer realm="{realm["url"]}",service="ctrpy-test",scope="repository:library/busybox:pull"'
            return json_reply(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})
        return forward(filled.port, request)

    with scripted(handler) as front:
        realm["url"] = f"http://{front.host}/token"
        _write(credentials_file, {"auths": {front.host: {"identitytoken": "refresh-secret"}}})
        ref = f"{front.host}/library/busybox:1"
        result = ctrpy(creds_daemon, namespace := _fresh(), "images", "pull", "--plain-http", ref)
        assert result.returncode == 0, result.stderr
    assert forms and all(form["grant_type"] == ["refresh_token"] for form in forms)
    assert forms[0]["service"] == ["ctrpy-test"] and forms[0]["scope"] == ["repository:library/busybox:pull"]
    with creds_daemon.client(namespace) as client:
        assert store.get(client, ref).target.digest == filled.busybox.manifest_digest


def test_a_challenging_mirror_is_asked_for_under_its_own_name(
        creds_daemon: Daemon, tmp_path: Path, auth_registry: tuple[LocalRegistry, ImageInfo]) -> None:
    """The upstream name is served by a mirror that wants basic auth: the client's auth stream
    is asked once, for the mirror's host (never for the upstream, which is not contacted)."""
    registry, info = auth_registry
    upstream = "registry.ctrpy-test.invalid"
    hosts = tmp_path / "certs.d"
    (hosts / upstream).mkdir(parents=True)
    (hosts / upstream / "hosts.toml").write_text(
        f'server = "https://{upstream}"\n\n[host."http://{registry.host}"]\n  capabilities = ["pull", "resolve"]\n')
    ref = f"{upstream}/{REPOSITORY}:1"
    with creds_daemon.client(_fresh()) as client:
        recorder = AuthRecorder(client, USER)
        try:
            def resolver(message: registry_pb2.RegistryResolver) -> None:
                message.host_dir = str(hosts)
                message.default_scheme = ""
                message.auth_stream = recorder.stream.id

            pull_with(client, ref, imagestore_pb2.ImageStore(name=ref), resolver=resolver)
        finally:
            recorder.close()
        assert store.get(client, ref).target.digest == info.manifest_digest
    assert recorder.hosts == [registry.host]


def test_http_dumps_hide_the_credentials(creds_daemon: Daemon,
                                         auth_registry: tuple[LocalRegistry, ImageInfo]) -> None:
    registry, _ = auth_registry
    with creds_daemon.client(_fresh()) as client:
        recorder = AuthRecorder(client, USER)
        logs = LogsReader(client)
        try:
            def resolver(message: registry_pb2.RegistryResolver) -> None:
                message.auth_stream = recorder.stream.id
                message.http_debug = registry_pb2.DEBUG
                message.logs_stream = logs.stream.id

            pull_with(client, f"{registry.host}/{REPOSITORY}:1", imagestore_pb2.ImageStore(name="dumped"),
                      resolver=resolver)
        finally:
            recorder.close()
        text = logs.finish()
    assert "HTTP/1.1 401 Unauthorized\r\n" in text and "Authorization: Basic ***\r\n" in text
    assert USER[1] not in text and _basic(*USER) not in text


def test_config_reads_and_renders_credentials_file() -> None:
    from ctrpy.manager import config

    parsed = config.parse('version = 1\n[transfer]\ncredentials_file = "/etc/ctrpy/registry.json"\n')
    assert parsed.transfer_credentials_file == "/etc/ctrpy/registry.json"
    assert config.parse(config.render(parsed)).transfer_credentials_file == "/etc/ctrpy/registry.json"
    assert config.Config().transfer_credentials_file == ""
