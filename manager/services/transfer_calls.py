"""The work of containerd.services.transfer.v1.Transfer: pulls from a registry into the image store,
pushes back. Imported at the first Transfer call (see :mod:`ctrpy.manager.transfer.lazy`).

A request's source and destination are ``Any`` messages with containerd's type URLs (the
protobuf full names, as containerd's typeurl writes them). ``containerd.types.transfer.
OCIRegistry`` -> ``ImageStore`` is a pull, done by :class:`ctrpy.manager.transfer.Puller`; the reverse is a
push (:class:`ctrpy.manager.transfer.Pusher`); other pairs (imports, exports) are answered with
UNIMPLEMENTED for now.

Progress goes to the stream the client named in ``options.progress_stream`` (opened on the
Streaming service first), which is closed when the transfer ends. Credentials come from the
resolver's ``auth_stream``, as containerd asks for them: when a registry challenges, an
``AuthRequest`` for the host challenging (the reference's registry, or a mirror), answered by an
``AuthResponse``, once per host. A request without an auth stream uses the daemon's
``[transfer] credentials_file`` (a docker ``config.json``), if one is configured.

The resolver's ``headers`` go with every registry request; its ``http_debug`` dumps requests and
responses to the stream named by ``logs_stream`` (the daemon's log without one) and traces
connections in the daemon's log (:mod:`ctrpy.manager.registry.debug`).
"""

from __future__ import annotations

import asyncio

import structlog

from ctrpy import errors, namespaces
from ctrpy.api.containerd.services.transfer.v1 import transfer_pb2 as api
from ctrpy.api.containerd.types import descriptor_pb2, platform_pb2
from ctrpy.api.containerd.types.transfer import imagestore_pb2, progress_pb2, registry_pb2
from ctrpy.errors import DeadlineExceeded, InvalidArgument
from ctrpy.images.model import Descriptor, Platform
from ctrpy.manager.registry import Credentials, CredentialSource
from ctrpy.manager.registry.debug import HttpTap
from ctrpy.manager.transfer import Stream, StreamManager, Transfers
from ctrpy.manager.transfer.bytestream import ByteStreamWriter
from ctrpy.manager.transfer.pull import ExtraReference, ProgressFn, PullRequest, UnpackTarget
from ctrpy.manager.transfer.streams import type_name, unpack

log = structlog.get_logger(__name__)

#: How long the client has to answer a credentials request on its auth stream.
AUTH_TIMEOUT = 30.0
_REGISTRY = registry_pb2.OCIRegistry.DESCRIPTOR.full_name
_IMAGE_STORE = imagestore_pb2.ImageStore.DESCRIPTOR.full_name


def platform_from_proto(message: platform_pb2.Platform) -> Platform:
    return Platform(message.os, message.architecture, message.variant, message.os_version,
                    tuple(message.os_features))


async def transfer(transfers: Transfers, streams: StreamManager, request: api.TransferRequest) -> None:
    """Run one Transfer call (see the module docstring)."""
    source, destination = type_name(request.source), type_name(request.destination)
    if (source, destination) not in ((_REGISTRY, _IMAGE_STORE), (_IMAGE_STORE, _REGISTRY)):
        if not source or not destination:
            raise InvalidArgument("transfer needs a source and a destination")
        raise errors.NotImplemented(f"transfer from {source} to {destination} is not supported")
    namespace = namespaces.require()
    progress_stream = (streams.get(namespace, request.options.progress_stream)
                       if request.options.progress_stream else None)
    try:
        report = _reporter(progress_stream)
        if source == _REGISTRY:
            await _pull(transfers, streams, namespace, request, report)
        else:
            await _push(transfers, streams, namespace, request, report)
    finally:
        if progress_stream is not None:
            progress_stream.close()


async def _credentials(transfers: Transfers, streams: StreamManager, namespace: str,
                       registry: registry_pb2.OCIRegistry) -> CredentialSource | None:
    """Where the transfer's credentials come from: the client, over its auth stream, or else
    the daemon's credentials file."""
    if not registry.resolver.auth_stream:
        return await transfers.file_credentials()
    return StreamCredentials(streams.get(namespace, registry.resolver.auth_stream), registry.reference)


class StreamCredentials:
    """Credentials asked of the client over its auth stream, per host, when a registry first
    challenges (an :class:`~ctrpy.manager.registry.auth.AskingCredentialSource`). One question
    at a time: the client answers in order."""

    def __init__(self, stream: Stream, reference: str) -> None:
        self._stream = stream
        self._reference = reference
        self._known: dict[str, Credentials | None] = {}
        self._lock = asyncio.Lock()

    def lookup(self, host: str) -> Credentials | None:
        return self._known.get(host)

    async def fetch(self, host: str) -> Credentials | None:
        if host not in self._known:
            async with self._lock:
                if host not in self._known:
                    self._known[host] = await _ask_credentials(self._stream, self._reference, host)
        return self._known[host]


def _http_debug(streams: StreamManager, namespace: str, registry: registry_pb2.OCIRegistry
                ) -> tuple[HttpTap | None, ByteStreamWriter | None]:
    """The HTTP debugging the resolver asks for, and the writer of its logs stream (both None
    when it asks for none)."""
    resolver = registry.resolver
    mode = resolver.http_debug
    if mode == registry_pb2.DISABLED:
        return None, None
    dump = mode in (registry_pb2.DEBUG, registry_pb2.BOTH)
    writer = None
    if resolver.logs_stream:
        writer = ByteStreamWriter(streams.get(namespace, resolver.logs_stream))
        writer.start()
    tap = HttpTap(dump=dump, trace=mode in (registry_pb2.TRACE, registry_pb2.BOTH),
                  sink=writer.write if writer is not None else None, context={"reference": registry.reference})
    return tap, writer


def _extra_reference(message: imagestore_pb2.ImageReference) -> ExtraReference:
    return ExtraReference(message.name, message.is_prefix, message.allow_overwrite, message.add_digest,
                          message.skip_named_digest)


async def _pull(transfers: Transfers, streams: StreamManager, namespace: str, request: api.TransferRequest,
                report: ProgressFn) -> None:
    registry = unpack(request.source, registry_pb2.OCIRegistry)
    store = unpack(request.destination, imagestore_pb2.ImageStore)
    tap, logs = _http_debug(streams, namespace, registry)
    try:
        pull = PullRequest(
            reference=registry.reference,
            name=store.name,
            labels=dict(store.labels),
            platforms=tuple(platform_from_proto(p) for p in store.platforms),
            unpacks=tuple(UnpackTarget(platform_from_proto(u.platform), u.snapshotter) for u in store.unpacks),
            all_metadata=store.all_metadata,
            manifest_limit=store.manifest_limit,
            extra_references=tuple(_extra_reference(r) for r in store.extra_references),
            host_dir=registry.resolver.host_dir,
            plain_http=registry.resolver.default_scheme == "http",
            credentials=await _credentials(transfers, streams, namespace, registry),
            headers=dict(registry.resolver.headers),
            tap=tap,
        )
        puller = await transfers.puller()
        images = await puller.pull_all(pull, report)
    finally:
        if logs is not None:
            await logs.aclose()
    for image in images:  # one "saved" per image record, as containerd reports them
        target = Descriptor(image.target.media_type, image.target.digest, image.target.size)
        report("saved", image.name, 0, 0, target)


async def _push(transfers: Transfers, streams: StreamManager, namespace: str, request: api.TransferRequest,
                report: ProgressFn) -> None:
    store = unpack(request.source, imagestore_pb2.ImageStore)
    registry = unpack(request.destination, registry_pb2.OCIRegistry)
    pusher = await transfers.pusher()
    tap, logs = _http_debug(streams, namespace, registry)
    try:
        root = await pusher.push(
            store.name or registry.reference, registry.reference,
            [platform_from_proto(p) for p in store.platforms], report,
            host_dir=registry.resolver.host_dir, plain_http=registry.resolver.default_scheme == "http",
            credentials=await _credentials(transfers, streams, namespace, registry),
            headers=dict(registry.resolver.headers), tap=tap,
        )  # fmt: skip
    finally:
        if logs is not None:
            await logs.aclose()
    report("pushed", registry.reference, root.size, root.size, root)


def _reporter(stream: Stream | None) -> ProgressFn:
    def report(event: str, name: str, done: int, total: int, desc: Descriptor | None) -> None:
        if stream is None:
            return
        message = progress_pb2.Progress(event=event, name=name, progress=done, total=total)
        if desc is not None:
            message.desc.CopyFrom(descriptor_pb2.Descriptor(media_type=desc.media_type, digest=desc.digest,
                                                            size=desc.size))
        stream.send(message)

    return report


async def _ask_credentials(stream: Stream, reference: str, host: str) -> Credentials | None:
    """Ask the client for the credentials of ``host``, as containerd's credential callback
    does; None for anonymous. DeadlineExceeded when the client does not answer."""
    stream.send(registry_pb2.AuthRequest(host=host, reference=reference))
    try:
        answer = await asyncio.wait_for(stream.recv(), AUTH_TIMEOUT)
    except TimeoutError:
        raise DeadlineExceeded(f"{host}: no answer to the credentials request") from None
    response = unpack(answer, registry_pb2.AuthResponse)
    if response.authType == registry_pb2.CREDENTIALS and response.username:
        return Credentials(response.username, response.secret)
    if response.authType == registry_pb2.REFRESH and response.secret:
        return Credentials("", response.secret)  # a refresh token: the OAuth form (see registry.auth)
    if response.authType == registry_pb2.HEADER:
        log.warning("credentials as a whole header are not supported; pulling anonymously", host=host)
    return None
