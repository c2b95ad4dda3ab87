"""Push primitives: what a push of an image is made of, in the order a pusher uses them.

For each blob (layers, then config): :func:`blob_exists` (a HEAD; what the registry has is not
sent again), else :func:`upload_blob`, which first offers a cross-repository mount when the
caller knows a repository of the same registry holding the blob, then uploads monolithically
(one ``PUT``) or in chunks (``PATCH`` with ``Content-Range``, then the closing ``PUT``). Then
:func:`put_manifest` for each manifest and last for the index, so that a registry never holds a
manifest naming what it does not have.

Uploads go to the first endpoint allowed to push. A streamed upload is not retried by the
session (its bytes are gone); :func:`upload_blob` restarts it from a fresh ``content`` when
given a callable.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator, Callable
from urllib.parse import urljoin

from ctrpy.errors import FailedPrecondition, InvalidArgument
from ctrpy.images.model import Descriptor
from ctrpy.manager.registry.auth import repository_scope
from ctrpy.manager.registry.errors import DigestMismatch, RegistryUnavailable
from ctrpy.manager.registry.hosts import Capability, Endpoint
from ctrpy.manager.registry.reference import ImageRef, parse
from ctrpy.manager.registry.remote import Remote, digest_of

Content = bytes | Callable[[], AsyncIterable[bytes]]


class Uploaded(enum.Enum):
    """How a blob got to the registry."""

    EXISTED = "existed"
    MOUNTED = "mounted"
    UPLOADED = "uploaded"


def _ref(reference: str | ImageRef) -> ImageRef:
    return parse(reference) if isinstance(reference, str) else reference


def _push_endpoint(remote: Remote, ref: ImageRef) -> Endpoint:
    return remote.endpoints(ref, Capability.PUSH)[0]


async def blob_exists(remote: Remote, reference: str | ImageRef, descriptor: Descriptor) -> bool:
    """Whether the repository already has ``descriptor``'s blob (HEAD; a size that disagrees
    counts as absent)."""
    ref = _ref(reference)
    endpoint = _push_endpoint(remote, ref)
    url = endpoint.url(ref.repository, "blobs", descriptor.digest)
    async with remote.session.request(remote.authorizer, endpoint, ref.host, "HEAD", url,
                                      scopes=[repository_scope(ref.repository, "pull", "push")],
                                      what=f"check blob {descriptor.digest}") as response:
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise RegistryUnavailable(f"registry {endpoint.host}: check blob {descriptor.digest}: "
                                      f"unexpected status {response.status_code}")
        length = response.headers.get("content-length", "")
        return not length.isdigit() or int(length) == descriptor.size


async def _chunks(content: Content, size: int) -> AsyncIterator[bytes]:
    if isinstance(content, bytes):
        yield content
        return
    async for chunk in content():
        yield chunk


async def _rechunk(content: Content, size: int, chunk_size: int) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for chunk in _chunks(content, size):
        buffer += chunk
        while len(buffer) >= chunk_size:
            yield bytes(buffer[:chunk_size])
            del buffer[:chunk_size]
    if buffer:
        yield bytes(buffer)


async def upload_blob(remote: Remote, reference: str | ImageRef, descriptor: Descriptor, content: Content,
                      *, chunk_size: int | None = None, mount_from: str | None = None,
                      check_exists: bool = True) -> Uploaded:
    """Make ``descriptor``'s blob present in ``reference``'s repository. ``content`` is the
    blob's bytes, or a callable giving a fresh async iterator over them. ``mount_from`` names a
    repository of the same registry to mount from; ``chunk_size`` switches to a chunked upload.
    Raises DigestMismatch when the registry disagrees about the digest, Unauthorized,
    RegistryUnavailable."""
    ref = _ref(reference)
    if chunk_size is not None and chunk_size <= 0:
        raise InvalidArgument(f"chunk size must be positive, not {chunk_size}")
    if check_exists and await blob_exists(remote, ref, descriptor):
        return Uploaded.EXISTED
    endpoint = _push_endpoint(remote, ref)
    scopes = [repository_scope(ref.repository, "pull", "push")]
    params: dict[str, str] = {}
    if mount_from and mount_from != ref.repository:
        scopes.append(repository_scope(mount_from, "pull"))
        params = {"mount": descriptor.digest, "from": mount_from}
    what = f"upload blob {descriptor.digest}"
    start_url = endpoint.url(ref.repository, "blobs/uploads")
    async with remote.session.request(remote.authorizer, endpoint, ref.host, "POST", start_url, scopes=scopes,
                                      params=params, what=what) as response:
        if response.status_code == 201 and params:
            return Uploaded.MOUNTED
        if response.status_code != 202:
            raise RegistryUnavailable(f"registry {endpoint.host}: {what}: starting the upload answered "
                                      f"{response.status_code}")
        location = _location(response.headers.get("location", ""), start_url, endpoint, what)
    if chunk_size is None:
        body = content if isinstance(content, bytes) else _chunks(content, descriptor.size)
        location = await _finish(remote, endpoint, ref, location, descriptor, body, scopes, what)
    else:
        offset = 0
        async for chunk in _rechunk(content, descriptor.size, chunk_size):
            headers = {"Content-Type": "application/octet-stream",
                       "Content-Range": f"{offset}-{offset + len(chunk) - 1}"}
            async with remote.session.request(remote.authorizer, endpoint, ref.host, "PATCH", location,
                                              scopes=scopes, headers=headers, content=chunk,
                                              what=f"{what} (bytes {offset}..)") as response:
                if response.status_code != 202:
                    raise RegistryUnavailable(f"registry {endpoint.host}: {what}: chunk at {offset} "
                                              f"answered {response.status_code}")
                location = _location(response.headers.get("location", ""), location, endpoint, what)
            offset += len(chunk)
        if offset != descriptor.size:
            raise DigestMismatch(f"{what}: content has {offset} bytes, expected {descriptor.size}")
        await _finish(remote, endpoint, ref, location, descriptor, b"", scopes, what)
    return Uploaded.UPLOADED


def _location(value: str, base: str, endpoint: Endpoint, what: str) -> str:
    if not value:
        raise RegistryUnavailable(f"registry {endpoint.host}: {what}: no upload location")
    return urljoin(base, value)


async def _finish(remote: Remote, endpoint: Endpoint, ref: ImageRef, location: str, descriptor: Descriptor,
                  body: bytes | AsyncIterable[bytes], scopes: list[str], what: str) -> str:
    headers = {"Content-Type": "application/octet-stream"}
    if not isinstance(body, bytes) or body:
        headers["Content-Length"] = str(descriptor.size)
    async with remote.session.request(remote.authorizer, endpoint, ref.host, "PUT", location, scopes=scopes,
                                      headers=headers, params={"digest": descriptor.digest}, content=body,
                                      what=what) as response:
        if response.status_code == 400:
            text = (await response.aread())[:500].decode(errors="replace")
            if "DIGEST_INVALID" in text or "SIZE_INVALID" in text:
                raise DigestMismatch(f"registry {endpoint.host}: {what}: the registry rejected the content: {text}")
        if response.status_code != 201:
            raise RegistryUnavailable(f"registry {endpoint.host}: {what}: closing the upload answered "
                                      f"{response.status_code}")
        sent = response.headers.get("docker-content-digest", "")
        if sent and sent != descriptor.digest:
            raise DigestMismatch(f"registry {endpoint.host}: {what}: registry stored it as {sent}")
        return location


async def put_manifest(remote: Remote, reference: str | ImageRef, descriptor: Descriptor, data: bytes) -> None:
    """Store a manifest or index under ``reference``'s tag (or its digest when it has no tag).
    Raises InvalidArgument when ``data`` does not match ``descriptor``, DigestMismatch when the
    registry reports another digest, FailedPrecondition with the registry's message when it
    refuses the manifest (for example one naming a blob it lacks), and the session's errors."""
    ref = _ref(reference)
    if len(data) != descriptor.size or digest_of(data, descriptor.digest) != descriptor.digest:
        raise InvalidArgument(f"manifest {descriptor.digest}: bytes do not match the descriptor")
    endpoint = _push_endpoint(remote, ref)
    target = ref.tag or descriptor.digest
    url = endpoint.url(ref.repository, "manifests", target)
    what = f"put manifest {ref.name}:{target}"
    async with remote.session.request(remote.authorizer, endpoint, ref.host, "PUT", url,
                                      scopes=[repository_scope(ref.repository, "pull", "push")],
                                      headers={"Content-Type": descriptor.media_type}, content=data,
                                      what=what) as response:
        if response.status_code != 201:
            text = (await response.aread())[:500].decode(errors="replace")
            kind = FailedPrecondition if 400 <= response.status_code < 500 else RegistryUnavailable
            raise kind(f"registry {endpoint.host}: {what}: answered {response.status_code}: {text}")
        sent = response.headers.get("docker-content-digest", "")
        if sent and sent != descriptor.digest:
            raise DigestMismatch(f"registry {endpoint.host}: {what}: registry stored it as {sent}")
