"""A PullImage's AuthConfig as credentials for the registry client, the way containerd's CRI
reads it (``ParseAuth``):

- ``server_address``, when set, limits the credentials to that registry host (a URL or a bare
  ``host[:port]``); a pull from elsewhere goes anonymous;
- ``username`` (with ``password``) wins; else ``identity_token``, a refresh token for the
  registry's token service; else ``auth``, base64 of ``user:password``;
- ``registry_token`` (a bearer token to send as it is) is not supported, as in containerd 1.x:
  the pull goes anonymous, and a registry that requires credentials refuses it.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

import structlog

from ctrpy.errors import InvalidArgument
from ctrpy.manager.registry import Credentials, CredentialSource, StaticCredentials

from .deps import PullAuth

log = structlog.get_logger(__name__)

#: A refresh token goes with an empty user name: the registry client then uses it in the token
#: service's OAuth form (grant_type=refresh_token), as containerd's CRI passes an identity token.
TOKEN_USER = ""


def _host(server_address: str) -> str:
    if "://" in server_address:
        return urlsplit(server_address).netloc
    return server_address.split("/", 1)[0]


def credentials(auth: PullAuth | None) -> CredentialSource | None:
    """The credential source for a pull (None: anonymous). InvalidArgument for an ``auth``
    that is not base64 of ``user:password``."""
    if auth is None:
        return None
    found: Credentials | None = None
    if auth.username:
        found = Credentials(auth.username, auth.password)
    elif auth.identity_token:
        found = Credentials(TOKEN_USER, auth.identity_token)
    elif auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("auth config: auth is not base64 of user:password") from None
        user, sep, password = decoded.partition(":")
        if not sep:
            raise InvalidArgument("auth config: invalid decoded auth (expected user:password)")
        found = Credentials(user, password.strip("\x00"))
    elif auth.registry_token:
        log.warning("a registry token in AuthConfig is not supported; pulling anonymously")
    if found is None:
        return None
    if auth.server_address:
        return StaticCredentials(per_host={_host(auth.server_address): found})
    return StaticCredentials(default=found)
