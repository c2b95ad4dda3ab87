"""Token caching of the Authorizer against a real token issuer: scopes merged per resource, and
one fetch per scope set however many requests want it at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from ctrpy.manager.registry.auth import Authorizer, Credentials, StaticCredentials, merge_scopes
from tests.registry.conftest import run
from tests.support.token_issuer import TokenIssuer


@pytest.mark.parametrize(("scopes", "merged"), [
    (["repository:a:pull"], ["repository:a:pull"]),
    (["repository:a:push", "repository:a:pull"], ["repository:a:pull,push"]),
    (["repository:a:pull,push", "repository:a:pull", "repository:b/c:pull"],
     ["repository:a:pull,push", "repository:b/c:pull"]),
    (["repository:a:push,pull", "registry:catalog:*"], ["registry:catalog:*", "repository:a:pull,push"]),
    (["odd", "odd"], ["odd"]),
])
def test_merge_scopes(scopes: list[str], merged: list[str]) -> None:
    assert merge_scopes(scopes) == merged


def test_concurrent_requests_share_one_token(tmp_path: Path) -> None:
    with TokenIssuer(tmp_path / "issuer", {"u": "pw"}) as issuer:
        challenge = f'Bearer realm="{issuer.realm}",service="{issuer.service}",scope="repository:a:pull"'
        authorizer = Authorizer(StaticCredentials(Credentials("u", "pw")))
        authorizer.learn("registry.test", [challenge])

        async def scenario() -> set[str | None]:
            async with httpx.AsyncClient(trust_env=False) as http:
                wanted = [["repository:a:pull"], ["repository:a:pull", "repository:a:pull"]] * 8
                headers = await asyncio.gather(*(authorizer.header(http, "registry.test", "registry.test", s)
                                                 for s in wanted))
                # pull and pull,push given apart are one scope set: one more token, then cached.
                headers += [await authorizer.header(http, "registry.test", "registry.test",
                                                    ["repository:a:pull", "repository:a:push"]) for _ in range(3)]
                return set(headers)

        assert len(run(scenario)) == 2
        assert issuer.scopes_issued("u") == [("repository:a:pull",), ("repository:a:pull,push",)]
