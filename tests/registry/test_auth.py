"""Authentication: challenge parsing, docker config.json, and the bearer-token flow against a
scripted token realm in front of a real registry."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.images import platforms
from ctrpy.manager.registry import Remote, Session, Unauthorized, plan
from ctrpy.manager.registry.auth import (
    Authorizer,
    Challenge,
    Credentials,
    DockerConfigCredentials,
    StaticCredentials,
    parse_challenges,
    parse_user,
)
from tests.registry.conftest import Pushed, run
from tests.support.registry import Reply, Request, forward, json_reply, scripted


@pytest.mark.parametrize(("header", "expected"), [
    ('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull"',
     [Challenge("bearer", {"realm": "https://auth.example/token", "service": "registry.example",
                           "scope": "repository:a/b:pull"})]),
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    ('basic realm="a, b", BEARER realm="https://t", service=s , error="invalid_token"',
     [Challenge("basic", {"realm": "a, b"}),
      Challenge("bearer", {"realm": "https://t", "service": "s", "error": "invalid_token"})]),
    ('Bearer realm="q\\"uote"', [Challenge("bearer", {"realm": 'q"uote'})]),
    ("Negotiate abc==, Basic realm=r", [Challenge("negotiate", {}), Challenge("basic", {"realm": "r"})]),
    ('Bearer scope="repository:a:pull repository:b:pull"',
     [Challenge("bearer", {"scope": "repository:a:pull repository:b:pull"})]),
    ("", []),
    ("=garbage", []),
])
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_parse_user() -> None:
    assert parse_user("alice:pw:with:colons") == Credentials("alice", "pw:with:colons")
    assert parse_user("bob") == Credentials("bob", "")
    with pytest.raises(InvalidArgument):
        parse_user(":pw")
    assert "pw" not in repr(Credentials("alice", "pw"))


def test_docker_config_json(tmp_path: Path) -> None:
    encoded = base64.b64encode(b"carol:c-pw").decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"dave:d:pw").decode()},
        "127.0.0.1:5000": {"auth": encoded},
        "https://quay.io": {"username": "erin", "password": "e-pw"},
        "empty.example": {},
    }, "credsStore": "desktop"}))
    creds = DockerConfigCredentials.load(path)
    assert creds.lookup("docker.io") == Credentials("dave", "d:pw")
    assert creds.lookup("127.0.0.1:5000") == Credentials("carol", "c-pw")
    assert creds.lookup("quay.io") == Credentials("erin", "e-pw")
    assert creds.lookup("empty.example") is None
    assert creds.lookup("other.example") is None
    for bad in ('{"auths": {"x": {"auth": "!!!"}}}', '{"auths": []}', "[]", "{"):
        path.write_text(bad)
        with pytest.raises(InvalidArgument, match="config.json"):
            DockerConfigCredentials.load(path)


class BearerFront:
    """A token realm and a registry front that demands its tokens, forwarding to a real
    registry. Tokens name their scope and expire per ``lifetime``."""

    def __init__(self, upstream_port: int, user: Credentials | None, lifetime: int = 300) -> None:
        self.upstream_port = upstream_port
        self.user = user
        self.lifetime = lifetime
        self.issued: list[tuple[str, ...]] = []
        self.port = 0

    def __call__(self, request: Request) -> Reply:
        url = urllib.parse.urlsplit(request.path)
        if url.path == "/token":
            query = urllib.parse.parse_qs(url.query)
            if self.user is not None and request.headers.get("authorization") != self.user.basic_header():
                return json_reply(401, {"details": "bad credentials"})
            scopes = tuple(sorted(query.get("scope", [])))
            self.issued.append(scopes)
            return json_reply(200, {"token": f"tok-{len(self.issued)}:{' '.join(scopes)}",
                                    "expires_in": self.lifetime})
        repository = url.path.removeprefix("/v2/").split("/manifests/")[0].split("/blobs/")[0]
        need = f"repository:{repository}:pull"
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if url.path == "/v2/" or need not in token.split(":", 1)[-1].split(" "):
            challenge = (f'Bearer realm="http://127.0.0.1:{self.port}/token",service="test-registry",'
                         f'scope="{need}"')
            return json_reply(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})
        return forward(self.upstream_port, request)


def test_bearer_flow_through_a_token_realm(pushed: Pushed) -> None:
    user = Credentials("frank", "f-pw")
    front = BearerFront(pushed.registry.port, user)
    with scripted(front) as server:
        front.port = server.port
        ref = f"{server.host}/library/busybox:latest"

        async def scenario() -> None:
            async with Session() as session:
                remote = Remote(session, plain_http=True, credentials=StaticCredentials(user))
                resolved = await remote.resolve(ref)
                assert resolved.descriptor.digest == pushed.busybox.manifest_digest
                image = await plan(remote, resolved, platforms.default())
                [layer] = image.layers()
                size = 0
                async for chunk in remote.fetch_blob(ref, layer):
                    size += len(chunk)
                assert size == layer.size
                # One token, cached for every later request of the same scope.
                assert front.issued == [("repository:library/busybox:pull",)]
                # Another repository needs another scope, hence another token.
                with pytest.raises(Exception, match="not found"):
                    await remote.resolve(f"{server.host}/library/absent:latest")
                assert front.issued[-1] == ("repository:library/absent:pull",)

                wrong = Remote(session, plain_http=True, credentials=StaticCredentials(Credentials("frank", "x")))
                with pytest.raises(Unauthorized, match=f"registry {server.host}: token realm .* refused as 'frank'"):
                    await wrong.resolve(ref)

        run(scenario)


def test_expired_tokens_are_fetched_again(pushed: Pushed) -> None:
    front = BearerFront(pushed.registry.port, None, lifetime=10)
    now = [1000.0]
    with scripted(front) as server:
        front.port = server.port
        ref = f"{server.host}/library/busybox:latest"

        async def scenario() -> None:
            async with Session() as session:
                remote = Remote(session, plain_http=True, authorizer=Authorizer(clock=lambda: now[0]))
                await remote.resolve(ref)
                await remote.resolve(ref)
                assert len(front.issued) == 1
                now[0] += 30  # past expires_in
                await remote.resolve(ref)
                assert len(front.issued) == 2

        run(scenario)
