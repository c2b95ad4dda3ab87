"""The HTTP layer: connection pools per TLS setting, authorization, retries and stall limits.

Every request of the registry client goes through :meth:`Session.request`, which:

1. picks (or makes) the ``httpx.AsyncClient`` for the endpoint's TLS settings (``skip_verify``,
   ``ca``, ``client``), so connections are reused across requests to the same registry;
2. adds the endpoint's configured headers, the ``ns`` query parameter when the endpoint is a
   mirror (so a mirror knows which upstream is meant, as containerd sends it), and the
   ``Authorization`` the :class:`~.auth.Authorizer` knows for the host;
3. on a 401, learns the challenge and tries once more with fresh authorization; a second 401
   (or a 403) is :class:`~.errors.Unauthorized`, naming the host;
4. retries connection errors, 429 and 5xx with exponential backoff, honouring ``Retry-After``
   (seconds or an HTTP date, capped), and gives up with :class:`~.errors.RegistryUnavailable`;
5. turns a read or write that made no progress for ``stall_timeout`` into
   :class:`~.errors.RegistryStalled` (not retried);
6. hands the caller the response *unread* (streamed), for every other status: what a 404 means
   is the caller's decision.

HTTP/1.1 is used (httpx's default); httpx speaks HTTP/2 when the ``h2`` package is installed
and :attr:`Options.http2` is set.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpcore
import httpx

from ctrpy.manager.registry.auth import Authorizer
from ctrpy.manager.registry.errors import (
    RegistryStalled,
    RegistryUnavailable,
    Unauthorized,
    UntrustedCertificate,
)
from ctrpy.manager.registry.hosts import Endpoint

USER_AGENT = "ctrpy/0.1"
# Bodies are read raw and hashed as they come: a content-encoded answer (httpx would offer
# gzip, deflate and zstd by default) would not hash to its digest.
DEFAULT_HEADERS = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: httpcore reads a response body 64 KiB at a time, each read a trip through anyio's cancel
#: scopes and h11's buffer: on a loopback registry that was half of a layer download's time.
#: Layers are large: read up to 256 KiB at a time (the class attribute is httpcore's knob).
BODY_READ_SIZE = 256 << 10
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = max(httpcore.AsyncHTTP11Connection.READ_NUM_BYTES, BODY_READ_SIZE)


@dataclass(frozen=True)
class Options:
    """Tunables of the client. ``retries`` is how many times one request is retried after its
    first attempt; ``stall_timeout`` bounds the time without a byte moving on a connection;
    ``max_document`` bounds manifests, indexes and configs (read whole into memory)."""

    retries: int = 4
    backoff: float = 0.25
    max_backoff: float = 8.0
    max_retry_after: float = 30.0
    stall_timeout: float = 60.0
    connect_timeout: float = 15.0
    max_document: int = 4 << 20
    http2: bool = False
    max_connections: int = 32


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _tls_key(endpoint: Endpoint) -> tuple[bool, tuple[str, ...], tuple[tuple[str, str], ...]]:
    return (endpoint.skip_verify, endpoint.ca_files, endpoint.client_pairs)


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext | bool:
    if not endpoint.ca_files and not endpoint.client_pairs:
        return not endpoint.skip_verify
    context = ssl.create_default_context()
    for ca in endpoint.ca_files:
        context.load_verify_locations(cafile=ca)
    for cert, key in endpoint.client_pairs:
        context.load_cert_chain(cert, key or None)
    if endpoint.skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Session:
    """The connection pools and policy shared by every request; one per daemon (or per test).
    Close it with :meth:`aclose` (or ``async with``)."""

    def __init__(self, options: Options | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.options = options or Options()
        self._transport = transport
        self._clients: dict[object, httpx.AsyncClient] = {}
        self._closed = False

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed = True
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def client(self, endpoint: Endpoint | None = None) -> httpx.AsyncClient:
        """The pooled client for ``endpoint``'s TLS settings (the default one for None)."""
        if self._closed:
            raise RuntimeError("registry session is closed")
        key = _tls_key(endpoint) if endpoint is not None else None
        client = self._clients.get(key)
        if client is None:
            opts = self.options
            timeout = httpx.Timeout(opts.stall_timeout, connect=opts.connect_timeout)
            limits = httpx.Limits(max_connections=opts.max_connections, max_keepalive_connections=16)
            verify = _ssl_context(endpoint) if endpoint is not None else True
            if self._transport is not None:
                client = httpx.AsyncClient(transport=self._transport, timeout=timeout,
                                           follow_redirects=True, headers=DEFAULT_HEADERS)
            else:
                client = httpx.AsyncClient(verify=verify, timeout=timeout, limits=limits, http2=opts.http2,
                                           follow_redirects=True, headers=DEFAULT_HEADERS,
                                           trust_env=False)
            self._clients[key] = client
        return client

    def backoff(self, attempt: int, hint: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if hint is not None:
            return min(hint, self.options.max_retry_after)
        base = min(self.options.max_backoff, self.options.backoff * 2.0 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)

    @asynccontextmanager
    async def request(self, authorizer: Authorizer, endpoint: Endpoint, upstream: str, method: str,
                      url: str, *, scopes: Sequence[str], headers: Mapping[str, str] | None = None,
                      params: Mapping[str, str] | None = None,
                      content: bytes | AsyncIterable[bytes] | None = None,
                      what: str = "") -> AsyncIterator[httpx.Response]:
        """Send one request with authorization and retries; yields the streamed response of any
        status but 401/403 and the retried ones. ``upstream`` is the registry host of the
        reference (credentials and the mirror ``ns`` parameter are derived from it); ``what``
        describes the request in error messages. A streamed ``content`` can be sent only once:
        such a request is not retried (the caller restarts the upload)."""
        once = content is not None and not isinstance(content, bytes)
        client = self.client(endpoint)
        describe = what or f"{method} {url}"
        query = dict(params or {})
        if endpoint.host != upstream:
            query.setdefault("ns", upstream)
        scopes = list(scopes)
        reauthorized = False
        attempt = 0
        while True:
            merged = httpx.Headers([(key, value) for key, values in endpoint.headers.items() for value in values])
            for key, value in (headers or {}).items():
                merged[key] = value
            # The token realm is reached with the endpoint's TLS settings, as containerd does.
            authorization = await authorizer.header(client, endpoint.host, upstream, scopes)
            if authorization:
                merged["Authorization"] = authorization
            # Merged by hand: httpx replaces a URL's query with ``params`` (upload locations
            # carry state in theirs).
            target = httpx.URL(url).copy_merge_params(query) if query else httpx.URL(url)
            tap = endpoint.tap
            request = client.build_request(method, target, headers=merged, content=content,
                                           extensions=tap.extensions() if tap is not None else None)
            if tap is not None:
                tap.request(request)
            try:
                response = await client.send(request, stream=True)
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as error:
                raise RegistryStalled(f"registry {endpoint.host}: {describe}: no progress for "
                                      f"{self.options.stall_timeout:g} s") from error
            except httpx.TransportError as error:
                if (untrusted := _certificate_error(error)) is not None:
                    raise UntrustedCertificate(
                        f"registry {endpoint.host}: {describe}: TLS certificate not trusted "
                        f"({untrusted.verify_message or untrusted.reason}); give its CA as `ca` in the "
                        f"host's hosts.toml, or set skip_verify = true there") from error
                attempt += 1
                if attempt > self.options.retries or once:
                    raise RegistryUnavailable(f"registry {endpoint.host}: {describe}: {_describe(error)} "
                                              f"(after {attempt} attempts)") from error
                await asyncio.sleep(self.backoff(attempt))
                continue
            if tap is not None:
                tap.response(response)
            status = response.status_code
            if status == 401 and not reauthorized and not once:
                challenges = response.headers.get_list("www-authenticate")
                await response.aclose()
                if authorization and authorization.startswith("Bearer "):
                    authorizer.forget_token(endpoint.host, scopes)
                challenge = authorizer.learn(endpoint.host, challenges)
                if challenge is not None:
                    # What the registry says this request needs (it may be more than asked).
                    scopes += [s for s in challenge.params.get("scope", "").split(" ") if s and s not in scopes]
                # Asked for now, per host, as containerd's authorizer asks its credentials callback.
                creds = await authorizer.ask(endpoint.host, upstream) if challenge is not None else None
                if challenge is None or (challenge.scheme == "basic" and creds is None):
                    raise Unauthorized(f"registry {endpoint.host}: {describe}: authentication required"
                                       + ("" if challenge else " (no challenge the client can meet)"))
                reauthorized = True
                continue
            if status in (401, 403):
                await response.aclose()
                creds = authorizer.credentials(endpoint.host) or authorizer.credentials(upstream)
                who = creds.describe() if creds else "anonymously"
                verb = "authentication failed" if status == 401 else "access denied"
                raise Unauthorized(f"registry {endpoint.host}: {describe}: {verb} {who} ({status})")
            if status in RETRY_STATUSES:
                hint = retry_after(response.headers.get("retry-after"))
                await response.aclose()
                attempt += 1
                if attempt > self.options.retries or once:
                    raise RegistryUnavailable(f"registry {endpoint.host}: {describe}: answered {status} "
                                              f"(after {attempt} attempts)")
                await asyncio.sleep(self.backoff(attempt, hint))
                continue
            try:
                yield response
            finally:
                await response.aclose()
            return


def _certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure under an httpx error (httpx wraps httpcore's error,
    which wraps ssl's), if that is what it is."""
    seen: BaseException | None = error
    for _ in range(8):  # a cause chain is short; the bound guards against a cycle
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _describe(error: httpx.TransportError) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
