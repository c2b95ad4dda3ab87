"""Registry authentication: challenges, credentials, and the bearer-token flow.

A registry says how it wants to be addressed in ``WWW-Authenticate`` on a 401:

* ``Basic realm="..."``: send ``Authorization: Basic`` with the host's credentials.
* ``Bearer realm="https://auth/token",service="registry",scope="repository:a/b:pull"``: ask the
  realm for a token (``GET realm?service=...&scope=...``, with basic credentials when the user
  has some, anonymously otherwise) and send ``Authorization: Bearer <token>``.

:class:`Authorizer` remembers the last challenge of each host, so that later requests carry the
right header from the start instead of collecting a 401 each, and caches tokens per (realm,
service, scopes, user) until shortly before they expire. Credentials come from a
:class:`CredentialSource`: fixed ones given with the request (``--user``), a docker
``config.json`` (``auths`` with a base64 ``auth``, ``username``/``password`` or an
``identitytoken``), or a source that asks someone per host (:class:`AskingCredentialSource`: the
client of a transfer, over its auth stream). Credentials with an empty username are a refresh
token (an identity token): a bearer realm is then asked with containerd's OAuth form (``POST``,
``grant_type=refresh_token``) instead of ``GET`` with basic credentials.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import httpx
import structlog

from ctrpy.errors import InvalidArgument
from ctrpy.manager.registry.errors import Unauthorized

log = structlog.get_logger(__name__)

DOCKER_INDEX_KEY = "https://index.docker.io/v1/"
#: The ``client_id`` sent with an OAuth token request (containerd sends ``containerd-client``).
OAUTH_CLIENT_ID = "ctrpy-client"
#: (file, host) pairs already warned about a credential helper (once per daemon, not per request).
_WARNED: set[tuple[str, str]] = set()
DEFAULT_TOKEN_LIFETIME = 60.0
# A token is dropped this long before the registry would reject it, so a request sent with it
# does not die in flight.
EXPIRY_MARGIN = 5.0


@dataclass(frozen=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a scheme (lower case) and its parameters
    (keys lower case)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(rf"[\s,]*({_TOKEN})(?=\s|,|$)")
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}))\s*")
_TOKEN68_RE = re.compile(r"\s*[A-Za-z0-9\-._~+/]+=*(?=\s*(?:,|$))")


def parse_challenges(header: str) -> list[Challenge]:
    """Parse a ``WWW-Authenticate`` value (RFC 7235: comma-separated challenges, each a scheme
    and ``key=value`` or ``key="quoted"`` parameters). Unparseable text ends the list rather
    than raising: a registry's odd header must not hide the challenges before it."""
    out: list[Challenge] = []
    pos = 0
    while True:
        scheme = _SCHEME_RE.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while True:
            # A failed match here is the next challenge's scheme (``, Basic realm=...``).
            param = _PARAM_RE.match(header, pos)
            if param is None:
                token68 = _TOKEN68_RE.match(header, pos) if not params else None
                if token68 is not None:
                    pos = token68.end()  # credentials of a scheme the client does not use
                break
            value = param[2] if param[2] is not None else param[3]
            params[param[1].lower()] = re.sub(r"\\(.)", r"\1", value)
            pos = param.end()
            if not header.startswith(",", pos):
                break
            pos += 1
        out.append(Challenge(scheme[1].lower(), params))
    return out


@dataclass(frozen=True)
class Credentials:
    """A username and password (or an access token as the password)."""

    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def describe(self) -> str:
        """Who these credentials present as, for error messages (never the secret)."""
        return f"as {self.username!r}" if self.username else "with a refresh token"

    def __repr__(self) -> str:  # never print a secret into a log
        return f"Credentials(username={self.username!r}, password=***)"


def parse_user(text: str) -> Credentials:
    """``USER[:PASSWORD]`` as ctr's ``--user`` takes it (an empty password when none is given)."""
    username, _, password = text.partition(":")
    if not username:
        raise InvalidArgument("--user: empty user name")
    return Credentials(username, password)


class CredentialSource(Protocol):
    """Finds the credentials for a registry host (``docker.io``, ``127.0.0.1:5000``)."""

    def lookup(self, host: str) -> Credentials | None:
        """The credentials for ``host``, or None to go anonymous. Must not block on I/O for long:
        it is called inside the request loop."""
        ...


@runtime_checkable
class AskingCredentialSource(CredentialSource, Protocol):
    """A source that has to ask (over the network, say) before it knows a host's credentials:
    :meth:`fetch` asks once per host; :meth:`lookup` then answers from what was fetched."""

    async def fetch(self, host: str) -> Credentials | None:
        """The credentials for ``host`` (asked for at the first call, remembered after)."""
        ...


@dataclass(frozen=True)
class NoCredentials:
    """Anonymous everywhere."""

    def lookup(self, host: str) -> Credentials | None:
        return None


@dataclass(frozen=True)
class StaticCredentials:
    """The same credentials for every host (``--user`` on one pull), or per host."""

    default: Credentials | None = None
    per_host: Mapping[str, Credentials] = field(default_factory=dict)

    def lookup(self, host: str) -> Credentials | None:
        return self.per_host.get(host, self.default)


def _auth_key(key: str) -> str:
    """The host a ``config.json`` auths key names (keys may be URLs, as docker login writes)."""
    if key == DOCKER_INDEX_KEY or key.rstrip("/") in ("https://index.docker.io/v1", "index.docker.io"):
        return "docker.io"
    if "://" in key:
        key = key.split("://", 1)[1]
    return key.split("/", 1)[0]


@dataclass(frozen=True)
class DockerConfigCredentials:
    """Credentials read from a docker ``config.json`` (its ``auths`` section). Credential
    helpers (``credsStore``, ``credHelpers``) are not run: a daemon must not exec what a user's
    file names. They are remembered in ``helpers`` (host -> helper, ``*`` for ``credsStore``) so
    that a lookup for a host only a helper knows says so in the log instead of silently going
    anonymous."""

    entries: Mapping[str, Credentials]
    helpers: Mapping[str, str] = field(default_factory=dict)
    where: str = "config.json"

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DockerConfigCredentials:
        """Read ``path``; raises InvalidArgument naming the file for malformed content, and
        FileNotFoundError when it is absent (callers decide whether that matters)."""
        where = str(path)
        try:
            doc = json.loads(Path(path).read_bytes())
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidArgument(f"{where}: not valid JSON: {error}") from None
        return cls.from_json(doc, where)

    @classmethod
    def from_json(cls, doc: object, where: str = "config.json") -> DockerConfigCredentials:
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{where}: must be a JSON object")
        auths = doc.get("auths", {})
        if not isinstance(auths, dict):
            raise InvalidArgument(f"{where}: auths must be an object")
        entries: dict[str, Credentials] = {}
        for key, entry in auths.items():
            if not isinstance(entry, dict):
                raise InvalidArgument(f"{where}: auths[{key!r}] must be an object")
            creds = _entry_credentials(entry, f"{where}: auths[{key!r}]")
            if creds is not None:
                entries[_auth_key(key)] = creds
        helpers: dict[str, str] = {}
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            helpers["*"] = store
        per_host = doc.get("credHelpers", {})
        if isinstance(per_host, dict):
            helpers.update({_auth_key(k): v for k, v in per_host.items() if isinstance(v, str) and v})
        return cls(entries, helpers, where)

    def lookup(self, host: str) -> Credentials | None:
        found = self.entries.get(host)
        if found is None:
            helper = self.helpers.get(host) or self.helpers.get("*")
            if helper is not None and (self.where, host) not in _WARNED:
                _WARNED.add((self.where, host))
                log.warning("credentials kept by a credential helper are not used: ctrpyd does not run "
                            "credential helpers", host=host, helper=f"docker-credential-{helper}", file=self.where)
        return found


def _entry_credentials(entry: Mapping[str, object], where: str) -> Credentials | None:
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument(f"{where}: auth is not base64 of user:password") from None
        user, colon, secret = decoded.partition(":")
        if not colon:
            raise InvalidArgument(f"{where}: auth is not base64 of user:password")
        return Credentials(user, secret)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and username and isinstance(password, str):
        return Credentials(username, password)
    # An ``identitytoken`` is a refresh token for the OAuth token flow (docker login writes one
    # for registries that hand them out): an empty username marks it, as in containerd.
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials("", token)
    return None


@dataclass
class _Token:
    value: str
    expires: float


Clock = Callable[[], float]


class Authorizer:
    """Adds ``Authorization`` to requests and learns from 401 challenges.

    An Authorizer holds one set of credentials, and the challenges and tokens earned with
    them. A :class:`~.remote.Remote` makes its own unless given one; a daemon that keeps one per
    credential source (anonymous, its config.json) shares tokens between pulls. It is safe for
    concurrent use in one event loop: the worst a race does is fetch a token twice.
    """

    def __init__(self, credentials: CredentialSource | None = None, *, clock: Clock = time.monotonic) -> None:
        self._credentials: CredentialSource = credentials or NoCredentials()
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[tuple[str, str, tuple[str, ...], str], _Token] = {}
        # One fetch per token key at a time: concurrent requests (the blobs of a push, pulls of
        # one image) wait for the first one's token instead of each asking the realm.
        self._fetching: dict[tuple[str, str, tuple[str, ...], str], tuple[asyncio.Lock, list[int]]] = {}
        self._clock = clock

    def credentials(self, host: str) -> Credentials | None:
        """The credentials known for ``host`` (for error messages)."""
        return self._credentials.lookup(host)

    async def ask(self, host: str, upstream: str) -> Credentials | None:
        """The credentials for a request to ``host`` on behalf of registry ``upstream`` (a
        mirror's own first, then the upstream's), asking an :class:`AskingCredentialSource`
        for each host at most once."""
        source = self._credentials
        for name in dict.fromkeys((host, upstream)):
            found = await source.fetch(name) if isinstance(source, AskingCredentialSource) else source.lookup(name)
            if found is not None:
                return found
        return None

    def learn(self, host: str, header_values: Sequence[str]) -> Challenge | None:
        """Record the challenge a 401 from ``host`` carried; returns the one used (bearer over
        basic), or None when the answer had no challenge the client can meet."""
        challenges = [c for value in header_values for c in parse_challenges(value)]
        for scheme in ("bearer", "basic"):
            for challenge in challenges:
                if challenge.scheme == scheme:
                    # The scope belongs to the request that was refused, not to the host: later
                    # requests ask for their own.
                    params = {k: v for k, v in challenge.params.items() if k != "scope"}
                    self._challenges[host] = Challenge(challenge.scheme, params)
                    return challenge
        return None

    async def header(self, http: httpx.AsyncClient, host: str, upstream: str, scopes: Sequence[str]) -> str | None:
        """The ``Authorization`` value for a request to ``host`` needing ``scopes``, or None when
        the host has not challenged yet (or asks for basic and there are no credentials).
        ``upstream`` is the registry name credentials are looked up under (a mirror uses its
        own name first, then the upstream's). Raises Unauthorized when a token realm refuses."""
        challenge = self._challenges.get(host)
        if challenge is None:
            return None
        creds = await self.ask(host, upstream)
        if challenge.scheme == "basic":
            # A refresh token (no username) means nothing to basic auth.
            return creds.basic_header() if creds and creds.username else None
        token = await self._token(http, host, challenge, scopes, creds)
        return f"Bearer {token}"

    def forget_token(self, host: str, scopes: Sequence[str]) -> None:
        """Drop cached tokens for ``host``'s current challenge (a 401 despite a token)."""
        challenge = self._challenges.get(host)
        if challenge is None:
            return
        realm, service = challenge.params.get("realm", ""), challenge.params.get("service", "")
        for key in [k for k in self._tokens if k[0] == realm and k[1] == service]:
            del self._tokens[key]

    async def _token(self, http: httpx.AsyncClient, host: str, challenge: Challenge,
                     scopes: Sequence[str], creds: Credentials | None) -> str:
        realm = challenge.params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise Unauthorized(f"registry {host}: bearer challenge without a usable realm ({realm!r})")
        service = challenge.params.get("service", "")
        wanted = merge_scopes(scopes)
        key = (realm, service, tuple(wanted), (creds.username or "\0refresh") if creds else "")
        cached = self._tokens.get(key)
        if cached is not None and cached.expires > self._clock():
            return cached.value
        lock, users = self._fetching.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                cached = self._tokens.get(key)
                if cached is not None and cached.expires > self._clock():
                    return cached.value
                return await self._fetch(http, host, key, realm, service, wanted, creds)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._fetching[key]

    async def _fetch(self, http: httpx.AsyncClient, host: str, key: tuple[str, str, tuple[str, ...], str],
                     realm: str, service: str, wanted: list[str], creds: Credentials | None) -> str:
        now = self._clock()
        params: list[tuple[str, str | int | float | bool | None]] = []
        if service:
            params.append(("service", service))
        params += [("scope", scope) for scope in wanted]
        try:
            if creds is not None and not creds.username:
                # A refresh token: containerd's OAuth form (FetchTokenWithOAuth).
                form = {"grant_type": "refresh_token", "refresh_token": creds.password, "service": service,
                        "client_id": OAUTH_CLIENT_ID, "scope": " ".join(wanted)}
                response = await http.post(realm, data=form)
            else:
                headers = {"Authorization": creds.basic_header()} if creds else {}
                response = await http.get(realm, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise Unauthorized(f"registry {host}: token realm {realm} failed: {error!r}") from error
        if response.status_code in (401, 403):
            who = creds.describe() if creds else "anonymously"
            raise Unauthorized(f"registry {host}: token realm {realm} refused {who} "
                               f"({response.status_code})")
        if response.status_code != 200:
            raise Unauthorized(f"registry {host}: token realm {realm} answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise Unauthorized(f"registry {host}: token realm {realm} sent no JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise Unauthorized(f"registry {host}: token realm {realm} sent no token")
        lifetime = body.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        self._tokens[key] = _Token(token, now + max(float(lifetime) - EXPIRY_MARGIN, 1.0))
        return token


def merge_scopes(scopes: Sequence[str]) -> list[str]:
    """``scopes`` with the actions of each resource merged and sorted, as containerd sends them
    (``repository:a:pull`` and ``repository:a:pull,push`` are ``repository:a:pull,push``): what
    a registry's challenge adds to what the client asked for must not make a second token for
    the same access. Scopes that are not ``type:name:actions`` are kept as they are."""
    merged: dict[str, set[str]] = {}
    other: set[str] = set()
    for scope in scopes:
        resource, colon, actions = scope.rpartition(":")
        if not colon or ":" not in resource or not actions:
            other.add(scope)
            continue
        merged.setdefault(resource, set()).update(a for a in actions.split(",") if a)
    out = [f"{resource}:{','.join(sorted(actions))}" for resource, actions in merged.items()]
    return sorted([*out, *other])


def repository_scope(repository: str, *actions: str) -> str:
    """``repository:<name>:<actions>`` as the token realm expects (``pull``, ``push``)."""
    return f"repository:{repository}:{','.join(actions or ('pull',))}"
