"""A registry as one pull or push sees it: resolve a reference, fetch manifests and blobs.

:class:`Remote` binds a :class:`~.session.Session` (daemon-wide pools and policy) to what one
request configures: the hosts directory, ``plain_http`` and credentials. Every read is checked:

* ``resolve`` asks the endpoints allowed to resolve, in order, with ``HEAD`` (falling back to
  ``GET`` when the answer does not give a digest, size and manifest type). A reference with a
  digest is verified against ``Docker-Content-Digest`` and, when the body is fetched, against the
  bytes; a ``Docker-Content-Digest`` that contradicts the bytes is an error.
* ``fetch_document`` reads a manifest, index or config whole, up to ``max_document`` bytes, and
  checks its size and digest.
* ``fetch_blob`` streams a blob from an offset, resuming with HTTP ``Range`` when a connection
  breaks mid-way (a registry that ignores ``Range`` and sends the whole blob is handled by
  skipping), and checks the size, and the digest when it saw every byte.

A 404, a refusal or an unreachable endpoint moves on to the next (a mirror may lack what the
upstream has, or be down); when none serves the request, the first real error is raised (else
NotFound). A stall or a digest mismatch ends the request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, replace

import httpx

from ctrpy.errors import CtrpyError, InvalidArgument, NotFound
from ctrpy.images import mediatypes
from ctrpy.images.model import Descriptor
from ctrpy.manager.registry.auth import Authorizer, CredentialSource, repository_scope
from ctrpy.manager.registry.debug import HttpTap
from ctrpy.manager.registry.errors import (
    DigestMismatch,
    RegistryStalled,
    RegistryUnavailable,
    TooLarge,
    Unauthorized,
    UntrustedCertificate,
)
from ctrpy.manager.registry.hosts import Capability, Endpoint, endpoints, filter_capable
from ctrpy.manager.registry.reference import ImageRef, parse
from ctrpy.manager.registry.session import Session

MANIFEST_ACCEPT = ", ".join((
    mediatypes.OCI_MANIFEST, mediatypes.DOCKER_MANIFEST, mediatypes.OCI_INDEX,
    mediatypes.DOCKER_MANIFEST_LIST, "*/*;q=0.8",
))


@dataclass(frozen=True)
class Resolved:
    """What a reference resolved to: the pinned reference, the root descriptor (manifest or
    index), the endpoint that answered, and the document's bytes when resolving had to fetch
    them anyway (None after a HEAD)."""

    ref: ImageRef
    descriptor: Descriptor
    endpoint: Endpoint
    data: bytes | None = None


def hasher_for(digest: str) -> hashlib._Hash:
    """A fresh hash object for ``digest``'s algorithm (sha256, sha384, sha512)."""
    algorithm = digest.partition(":")[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise InvalidArgument(f"unsupported digest algorithm in {digest!r}")
    return hashlib.new(algorithm)


def digest_of(data: bytes, like: str = "sha256:") -> str:
    """The digest of ``data`` with the algorithm of ``like``."""
    hasher = hasher_for(like)
    hasher.update(data)
    return f"{hasher.name}:{hasher.hexdigest()}"


def sniff_media_type(data: bytes) -> str:
    """A manifest's media type from its JSON, for registries that send no usable Content-Type."""
    try:
        doc = json.loads(data)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return str(media_type)
    if "manifests" in doc:
        return mediatypes.OCI_INDEX
    if "config" in doc or "layers" in doc:
        return mediatypes.OCI_MANIFEST
    if doc.get("schemaVersion") == 1:
        return mediatypes.DOCKER_SCHEMA1
    return ""


def _content_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


_KNOWN_ROOTS = mediatypes.MANIFESTS | mediatypes.INDEXES


class Remote:
    """One request's view of the registries. Cheap to make; share the :class:`Session`."""

    def __init__(self, session: Session, *, config_path: str | os.PathLike[str] | None = None,
                 plain_http: bool = False, credentials: CredentialSource | None = None,
                 authorizer: Authorizer | None = None, headers: Mapping[str, str] | None = None,
                 tap: HttpTap | None = None) -> None:
        self.session = session
        self.config_path = config_path
        self.plain_http = plain_http
        self.authorizer = authorizer or Authorizer(credentials)
        #: Headers of the request (the transfer resolver's ``headers``) sent to every endpoint,
        #: before those its hosts.toml adds, as containerd's resolver headers are.
        self.headers = dict(headers or {})
        self.tap = tap

    def endpoints(self, ref: ImageRef, capability: Capability) -> list[Endpoint]:
        """The endpoints that may serve ``capability`` for ``ref``'s host, in order. Raises
        NotFound when the configuration leaves none."""
        found = filter_capable(endpoints(ref.host, self.config_path, plain_http=self.plain_http), capability)
        if not found:
            raise NotFound(f"{ref.host}: no endpoint configured for {str(capability.name).lower()}")
        if self.headers or self.tap is not None:
            found = [replace(endpoint, headers=_merge_headers(self.headers, endpoint.headers), tap=self.tap)
                     for endpoint in found]
        return found

    # -- resolve ------------------------------------------------------------------------------

    async def resolve(self, reference: str | ImageRef) -> Resolved:
        """Resolve a reference to the descriptor of its manifest or index. Raises NotFound when
        no endpoint has it, DigestMismatch when what is sent contradicts the reference, TooLarge,
        Unauthorized, RegistryUnavailable or RegistryStalled."""
        ref = parse(reference) if isinstance(reference, str) else reference
        failures = _Failures(NotFound(f"{ref}: not found"))
        for endpoint in self.endpoints(ref, Capability.RESOLVE):
            try:
                return await self._resolve_at(ref, endpoint)
            except (NotFound, RegistryUnavailable, Unauthorized, UntrustedCertificate) as error:
                failures.note(error)
        raise failures.error()

    async def _resolve_at(self, ref: ImageRef, endpoint: Endpoint) -> Resolved:
        url = endpoint.url(ref.repository, "manifests", ref.object)
        scopes = [repository_scope(ref.repository, "pull")]
        headers = {"Accept": MANIFEST_ACCEPT}
        async with self.session.request(self.authorizer, endpoint, ref.host, "HEAD", url, scopes=scopes,
                                        headers=headers, what=f"resolve {ref}") as response:
            status = response.status_code
            if status == 404:
                raise NotFound(f"{ref}: not found on {endpoint.host}")
            if status == 200:
                header_digest = response.headers.get("docker-content-digest", "")
                media_type = _content_type(response)
                length = response.headers.get("content-length", "")
                if ref.digest and header_digest and header_digest != ref.digest:
                    raise DigestMismatch(f"registry {endpoint.host}: {ref}: registry says digest {header_digest}")
                digest = ref.digest or header_digest
                if digest and media_type in _KNOWN_ROOTS and length.isdigit():
                    descriptor = Descriptor(media_type, digest, int(length))
                    return Resolved(ref.with_digest(digest), descriptor, endpoint)
            # Other answers to HEAD (405, missing headers) fall back to GET, as containerd does.
        return await self._get_root(ref, endpoint, url, scopes, headers)

    async def _get_root(self, ref: ImageRef, endpoint: Endpoint, url: str, scopes: list[str],
                        headers: dict[str, str]) -> Resolved:
        async with self.session.request(self.authorizer, endpoint, ref.host, "GET", url, scopes=scopes,
                                        headers=headers, what=f"resolve {ref}") as response:
            if response.status_code == 404:
                raise NotFound(f"{ref}: not found on {endpoint.host}")
            if response.status_code != 200:
                raise RegistryUnavailable(f"registry {endpoint.host}: resolve {ref}: unexpected status "
                                          f"{response.status_code}")
            data = await self._read_limited(response, endpoint, f"manifest {ref}", None)
            header_digest = response.headers.get("docker-content-digest", "")
            media_type = _content_type(response)
        if media_type not in _KNOWN_ROOTS:
            media_type = sniff_media_type(data) or media_type
        if media_type == mediatypes.DOCKER_SCHEMA1:
            raise InvalidArgument(f"{ref}: Docker schema 1 manifests are not supported")
        if media_type not in _KNOWN_ROOTS:
            raise InvalidArgument(f"registry {endpoint.host}: {ref}: unknown manifest type {media_type!r}")
        if ref.digest:
            actual = digest_of(data, ref.digest)
            if actual != ref.digest:
                raise DigestMismatch(f"registry {endpoint.host}: {ref}: content has digest {actual}, "
                                     f"expected {ref.digest}")
        if header_digest and digest_of(data, header_digest) != header_digest:
            raise DigestMismatch(f"registry {endpoint.host}: {ref}: Docker-Content-Digest {header_digest} "
                                 f"does not match the content ({digest_of(data, header_digest)})")
        digest = ref.digest or header_digest or digest_of(data)
        descriptor = Descriptor(media_type, digest, len(data))
        return Resolved(ref.with_digest(digest), descriptor, endpoint, data)

    async def _read_limited(self, response: httpx.Response, endpoint: Endpoint, what: str,
                            size: int | None) -> bytes:
        limit = self.session.options.max_document
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"registry {endpoint.host}: {what}: {declared} bytes exceed the limit of {limit}")
        buffer = bytearray()
        cap = limit if size is None else min(limit, size)
        try:
            async for chunk in response.aiter_raw():
                buffer += chunk
                if len(buffer) > cap:
                    if size is not None and len(buffer) > size and size <= limit:
                        raise DigestMismatch(f"registry {endpoint.host}: {what}: more than the {size} "
                                             "bytes expected")
                    raise TooLarge(f"registry {endpoint.host}: {what}: exceeds the limit of {limit} bytes")
        except (httpx.ReadTimeout, httpx.WriteTimeout) as error:
            raise RegistryStalled(f"registry {endpoint.host}: {what}: no progress for "
                                  f"{self.session.options.stall_timeout:g} s") from error
        except httpx.TransportError as error:
            raise RegistryUnavailable(f"registry {endpoint.host}: {what}: {error!r}") from error
        return bytes(buffer)

    # -- documents ----------------------------------------------------------------------------

    async def fetch_document(self, reference: str | ImageRef, descriptor: Descriptor) -> bytes:
        """Fetch a manifest, index or config whole and verify size and digest. Manifests and
        indexes come from ``/manifests/``, anything else from ``/blobs/``. Raises TooLarge when
        the descriptor (or the answer) exceeds ``max_document``, NotFound, DigestMismatch, or the
        session's errors."""
        ref = parse(reference) if isinstance(reference, str) else reference
        limit = self.session.options.max_document
        what = f"{descriptor.media_type or 'blob'} {descriptor.digest}"
        if descriptor.size > limit:
            raise TooLarge(f"{ref.name}: {what}: {descriptor.size} bytes exceed the limit of {limit}")
        kind = "manifests" if descriptor.media_type in _KNOWN_ROOTS else "blobs"
        failures = _Failures(NotFound(f"{ref.name}: {what}: not found"))
        for endpoint in self.endpoints(ref, Capability.PULL):
            url = endpoint.url(ref.repository, kind, descriptor.digest)
            headers = {"Accept": descriptor.media_type or MANIFEST_ACCEPT} if kind == "manifests" else {}
            try:
                async with self.session.request(self.authorizer, endpoint, ref.host, "GET", url,
                                                scopes=[repository_scope(ref.repository, "pull")],
                                                headers=headers, what=f"fetch {what}") as response:
                    if response.status_code == 404:
                        failures.note(NotFound(f"{ref.name}: {what}: not found on {endpoint.host}"))
                        continue
                    if response.status_code != 200:
                        raise RegistryUnavailable(f"registry {endpoint.host}: fetch {what}: unexpected "
                                                  f"status {response.status_code}")
                    data = await self._read_limited(response, endpoint, what, descriptor.size)
            except (RegistryUnavailable, Unauthorized, UntrustedCertificate) as error:
                failures.note(error)
                continue
            _verify(data, descriptor, endpoint)
            return data
        raise failures.error()

    # -- blobs --------------------------------------------------------------------------------

    async def fetch_blob(self, reference: str | ImageRef, descriptor: Descriptor, offset: int = 0,
                         *, verify: bool = True) -> AsyncIterator[bytes]:
        """Stream blob ``descriptor`` from byte ``offset`` on, resuming with ``Range`` across
        broken connections. With ``offset == 0`` and ``verify``, the digest is checked when the
        last byte arrived (a mismatch raises DigestMismatch *after* the bytes were yielded: the
        caller must not commit before the iterator ends); the size is always checked. Raises
        NotFound when no endpoint has the blob, RegistryStalled, RegistryUnavailable after the
        retries, Unauthorized."""
        ref = parse(reference) if isinstance(reference, str) else reference
        if offset < 0 or offset > descriptor.size:
            raise InvalidArgument(f"{descriptor.digest}: offset {offset} outside 0..{descriptor.size}")
        hasher = hasher_for(descriptor.digest) if verify and offset == 0 else None
        position = offset
        failures = _Failures(NotFound(f"{ref.name}: blob {descriptor.digest}: not found"))
        options = self.session.options
        for endpoint in self.endpoints(ref, Capability.PULL):
            url = endpoint.url(ref.repository, "blobs", descriptor.digest)
            broken = 0
            while position < descriptor.size or (descriptor.size == 0 and position == 0):
                progressed = position
                try:
                    # aclosing: a consumer that stops early must not leave the response open.
                    async with contextlib.aclosing(self._blob_stream(ref, endpoint, url, descriptor,
                                                                     position)) as stream:
                        async for chunk in stream:
                            position += len(chunk)
                            if position > descriptor.size:
                                raise DigestMismatch(f"registry {endpoint.host}: blob {descriptor.digest}: "
                                                     f"more than the {descriptor.size} bytes expected")
                            if hasher is not None:
                                hasher.update(chunk)
                            yield chunk
                except _Missing as missing:
                    failures.note(NotFound(f"{ref.name}: blob {descriptor.digest}: not found on {missing.host}"))
                    break
                except _Broken as error:
                    broken = 0 if position > progressed else broken + 1
                    if broken > options.retries:
                        failures.note(RegistryUnavailable(
                            f"registry {endpoint.host}: blob {descriptor.digest}: {error.reason} at byte "
                            f"{position} (after {broken} attempts)"))
                        break
                    await asyncio.sleep(self.session.backoff(max(broken, 1)))
                    continue
                except (RegistryUnavailable, Unauthorized, UntrustedCertificate) as error:
                    failures.note(error)
                    break
                if descriptor.size == 0 or position == descriptor.size:
                    break
                if position < descriptor.size:
                    # The registry ended the body early without an error: resume like a break.
                    broken = 0 if position > progressed else broken + 1
                    if broken > options.retries:
                        failures.note(RegistryUnavailable(
                            f"registry {endpoint.host}: blob {descriptor.digest}: short body at byte {position}"))
                        break
                    await asyncio.sleep(self.session.backoff(max(broken, 1)))
            if position == descriptor.size:
                if hasher is not None:
                    actual = f"{hasher.name}:{hasher.hexdigest()}"
                    if actual != descriptor.digest:
                        raise DigestMismatch(f"registry {endpoint.host}: blob {descriptor.digest}: content "
                                             f"has digest {actual}")
                return
        raise failures.error()

    async def _blob_stream(self, ref: ImageRef, endpoint: Endpoint, url: str, descriptor: Descriptor,
                           position: int) -> AsyncGenerator[bytes, None]:
        headers = {"Range": f"bytes={position}-"} if position else {}
        what = f"fetch blob {descriptor.digest}"
        async with self.session.request(self.authorizer, endpoint, ref.host, "GET", url,
                                        scopes=[repository_scope(ref.repository, "pull")],
                                        headers=headers, what=what) as response:
            status = response.status_code
            if status == 404:
                raise _Missing(endpoint.host)
            skip = 0
            if status == 206:
                content_range = response.headers.get("content-range", "")
                if not content_range.startswith(f"bytes {position}-"):
                    raise RegistryUnavailable(f"registry {endpoint.host}: {what}: asked for byte {position} "
                                              f"on, got range {content_range!r}")
            elif status == 200:
                skip = position  # Range ignored: the whole blob comes again
            elif status == 416 and position == descriptor.size:
                return
            else:
                raise RegistryUnavailable(f"registry {endpoint.host}: {what}: unexpected status {status}")
            try:
                # As received (not re-chunked), so that a break loses nothing already read.
                async for chunk in response.aiter_raw():
                    if skip:
                        dropped = min(skip, len(chunk))
                        skip -= dropped
                        chunk = chunk[dropped:]
                        if not chunk:
                            continue
                    yield chunk
            except (httpx.ReadTimeout, httpx.WriteTimeout) as error:
                raise RegistryStalled(f"registry {endpoint.host}: {what}: no progress for "
                                      f"{self.session.options.stall_timeout:g} s at byte {position}") from error
            except httpx.TransportError as error:
                raise _Broken(f"{type(error).__name__}") from error


def _merge_headers(request: Mapping[str, str], configured: Mapping[str, tuple[str, ...]]
                   ) -> Mapping[str, tuple[str, ...]]:
    """The request's headers, then each header's values from hosts.toml added after them
    (containerd adds a host's ``header`` values to the resolver's)."""
    merged: dict[str, tuple[str, ...]] = {}
    for key, value in request.items():
        merged[key.lower()] = (*merged.get(key.lower(), ()), value)
    for key, values in configured.items():
        merged[key.lower()] = (*merged.get(key.lower(), ()), *values)
    return merged


class _Failures:
    """The outcome of trying endpoints in turn, as containerd reports it: the first real error
    (an endpoint that is down or refuses us), else "not found"."""

    def __init__(self, not_found: NotFound) -> None:
        self._not_found = not_found
        self._first: CtrpyError | None = None

    def note(self, error: CtrpyError) -> None:
        if isinstance(error, NotFound):
            self._not_found = error
        elif self._first is None:
            self._first = error

    def error(self) -> CtrpyError:
        return self._first or self._not_found


class _Missing(Exception):
    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.host = host


class _Broken(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _verify(data: bytes, descriptor: Descriptor, endpoint: Endpoint) -> None:
    if len(data) != descriptor.size:
        raise DigestMismatch(f"registry {endpoint.host}: {descriptor.digest}: got {len(data)} bytes, "
                             f"expected {descriptor.size}")
    actual = digest_of(data, descriptor.digest)
    if actual != descriptor.digest:
        raise DigestMismatch(f"registry {endpoint.host}: {descriptor.digest}: content has digest {actual}")

