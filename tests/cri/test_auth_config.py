"""How a PullImage's AuthConfig becomes the registry client's credentials (as containerd's CRI
parses it)."""

from __future__ import annotations

import base64

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager.cri.auth import credentials
from ctrpy.manager.cri.deps import PullAuth
from ctrpy.manager.registry import Credentials


def _for(auth: PullAuth, host: str = "registry.example") -> Credentials | None:
    source = credentials(auth)
    return None if source is None else source.lookup(host)


def test_user_and_password_win_over_the_rest() -> None:
    found = _for(PullAuth(username="u", password="p", identity_token="t", auth="eDp5"))
    assert found is not None and (found.username, found.password) == ("u", "p")


def test_an_identity_token_is_a_refresh_token_with_no_user_name() -> None:
    """The registry client sends a credential with an empty user name to the token realm as
    containerd's OAuth refresh form; a made-up user name would be sent as basic auth."""
    found = _for(PullAuth(identity_token="refresh-me"))
    assert found is not None and (found.username, found.password) == ("", "refresh-me")


def test_auth_is_base64_of_user_and_password() -> None:
    encoded = base64.b64encode(b"alice:s3cr:et").decode()
    found = _for(PullAuth(auth=encoded))
    assert found is not None and (found.username, found.password) == ("alice", "s3cr:et")
    with pytest.raises(InvalidArgument, match="base64"):
        credentials(PullAuth(auth="not base64!"))
    with pytest.raises(InvalidArgument, match="user:password"):
        credentials(PullAuth(auth=base64.b64encode(b"no-colon").decode()))


def test_a_server_address_scopes_the_credentials_to_its_host() -> None:
    auth = PullAuth(username="u", password="p", server_address="https://registry.example/v2/")
    assert _for(auth, "registry.example") is not None
    assert _for(auth, "other.example") is None


def test_nothing_usable_means_anonymous() -> None:
    assert credentials(None) is None
    assert credentials(PullAuth()) is None
    assert credentials(PullAuth(registry_token="bearer")) is None
