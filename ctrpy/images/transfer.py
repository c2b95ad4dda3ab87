"""Pulls and pushes done by the daemon: the client side of containerd's Transfer API.

As containerd's Go client (``core/transfer/proxy``) does it: the client opens a stream on the
Streaming service for progress (and one for credentials when it has any), each named by a fresh
id and acknowledged by the server, then makes one ``Transfer`` call whose source is an
``OCIRegistry`` and destination an ``ImageStore`` for a pull, the reverse for a push (``Any``
messages with containerd's type URLs, the protobuf full names), naming those streams. The server sends ``Progress`` messages on the
progress stream and closes it when the transfer ends; it sends an ``AuthRequest`` on the
credentials stream when it needs credentials, which the client answers with an
``AuthResponse``. Works against ctrpyd and containerd 1.7+ alike.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from ctrpy import errors
from ctrpy.api.containerd.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
from ctrpy.api.containerd.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from ctrpy.api.containerd.types import platform_pb2
from ctrpy.api.containerd.types.transfer import imagestore_pb2, progress_pb2, registry_pb2
from ctrpy.client import Client
from ctrpy.images.model import Platform


@dataclass(frozen=True)
class Progress:
    """One progress event of a transfer (containerd's ``transfer.Progress``)."""

    event: str
    name: str
    progress: int = 0
    total: int = 0
    digest: str = ""
    media_type: str = ""


@dataclass(frozen=True)
class PullOptions:
    """A pull as ctr 2.x asks for it. ``platforms`` empty means every platform of an index;
    ``unpack`` lists the platforms to unpack into ``snapshotter`` ("" for the daemon's
    default); ``user`` is ``USER[:PASSWORD]``."""

    platforms: tuple[Platform, ...] = ()
    unpack: tuple[Platform, ...] = ()
    snapshotter: str = ""
    plain_http: bool = False
    hosts_dir: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def _pack(message: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


def _stream_id(kind: str) -> str:
    """A fresh stream name, as containerd's ``streaming.GenerateID`` makes them."""
    return f"{kind}-{time.time_ns()}-{secrets.token_hex(4)}"


def _platform(platform: Platform) -> platform_pb2.Platform:
    return platform_pb2.Platform(os=platform.os, architecture=platform.architecture, variant=platform.variant,
                                 os_version=platform.os_version, os_features=list(platform.os_features))


_END = object()


class _Stream:
    """One stream opened on the Streaming service; messages it receives go to ``on_message``
    in a thread of its own until the server ends the stream."""

    def __init__(self, client: Client, kind: str, on_message: Callable[[_Stream, any_pb2.Any], None]) -> None:
        self.id = _stream_id(kind)
        self._outgoing: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._outgoing.put(_pack(streaming_pb2.StreamInit(id=self.id)))
        stub = streaming_pb2_grpc.StreamingStub(client.channel)
        self._call = stub.Stream(self._requests(), metadata=client.metadata)
        try:
            next(self._call)  # the server's acknowledgement: the stream is registered
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None
        except StopIteration:
            raise errors.Unavailable(f"stream {self.id} was refused") from None
        self._on_message = on_message
        self._thread = threading.Thread(target=self._receive, name=f"stream-{kind}", daemon=True)
        self._thread.start()

    def _requests(self) -> Iterator[any_pb2.Any]:
        while (item := self._outgoing.get()) is not _END:
            assert isinstance(item, any_pb2.Any)
            yield item

    def _receive(self) -> None:
        try:
            for message in self._call:
                self._on_message(self, message)
        except grpc.RpcError:
            pass  # cancelled, or the daemon went away: the Transfer call reports what matters

    def send(self, message: Message) -> None:
        self._outgoing.put(_pack(message))

    def finish(self, timeout: float = 10.0) -> None:
        """Wait (a while) for the server to end the stream, then let it go."""
        self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        """Cancel the stream and wait for its thread: a thread still inside a gRPC call when
        the interpreter exits can hang grpc's shutdown (seen once under load, after a failed
        pull had printed its error)."""
        self._outgoing.put(_END)
        self._call.cancel()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)


def _progress_handler(report: Callable[[Progress], None]) -> Callable[[_Stream, any_pb2.Any], None]:
    def handle(stream: _Stream, message: any_pb2.Any) -> None:
        if message.type_url.rsplit("/", 1)[-1] != progress_pb2.Progress.DESCRIPTOR.full_name:
            return
        event = progress_pb2.Progress.FromString(message.value)
        report(Progress(event.event, event.name, event.progress, event.total, event.desc.digest,
                        event.desc.media_type))

    return handle


def _credentials_handler(user: str) -> Callable[[_Stream, any_pb2.Any], None]:
    username, _, secret = user.partition(":")

    def handle(stream: _Stream, message: any_pb2.Any) -> None:
        if message.type_url.rsplit("/", 1)[-1] != registry_pb2.AuthRequest.DESCRIPTOR.full_name:
            return
        stream.send(registry_pb2.AuthResponse(authType=registry_pb2.CREDENTIALS, username=username, secret=secret))

    return handle


def pull(client: Client, reference: str, options: PullOptions,
         report: Callable[[Progress], None] | None = None, name: str = "") -> None:
    """Have the daemon pull ``reference`` and store it as ``name`` (default: the reference).

    Raises NotImplemented (UNIMPLEMENTED) against a daemon without the Transfer service, and what
    the daemon's pull raises otherwise."""
    destination = imagestore_pb2.ImageStore(
        name=name or reference,
        labels=dict(options.labels),
        platforms=[_platform(p) for p in options.platforms],
        unpacks=[imagestore_pb2.UnpackConfiguration(platform=_platform(p), snapshotter=options.snapshotter)
                 for p in options.unpack],
    )
    _transfer(client, reference, options, report, lambda registry: (registry, destination))


def push(client: Client, reference: str, options: PullOptions,
         report: Callable[[Progress], None] | None = None, name: str = "") -> None:
    """Have the daemon push its image ``name`` (default: ``reference``) to ``reference``; only
    ``options.platforms`` of an index when given. Errors as for :func:`pull`."""
    source = imagestore_pb2.ImageStore(name=name or reference, platforms=[_platform(p) for p in options.platforms])
    _transfer(client, reference, options, report, lambda registry: (source, registry))


def _transfer(client: Client, reference: str, options: PullOptions, report: Callable[[Progress], None] | None,
              pair: Callable[[registry_pb2.OCIRegistry], tuple[Message, Message]]) -> None:
    if options.user and not options.user.partition(":")[0]:
        raise errors.InvalidArgument("--user: empty user name")
    try:
        _run(client, reference, options, report, pair)
    except errors.NotImplemented as error:
        raise errors.NotImplemented(
            f"the daemon does not serve the Transfer API ({error.message}); for a pull, do it in the "
            "client instead (ctrpy images pull --local)") from None


def _run(client: Client, reference: str, options: PullOptions, report: Callable[[Progress], None] | None,
         pair: Callable[[registry_pb2.OCIRegistry], tuple[Message, Message]]) -> None:
    streams: list[_Stream] = []
    try:
        progress_id = ""
        if report is not None:
            streams.append(_Stream(client, "progress", _progress_handler(report)))
            progress_id = streams[-1].id
        resolver = registry_pb2.RegistryResolver(host_dir=options.hosts_dir,
                                                 default_scheme="http" if options.plain_http else "")
        if options.user:
            streams.append(_Stream(client, "creds", _credentials_handler(options.user)))
            resolver.auth_stream = streams[-1].id
        source, destination = pair(registry_pb2.OCIRegistry(reference=reference, resolver=resolver))
        request = transfer_pb2.TransferRequest(
            source=_pack(source), destination=_pack(destination),
            options=transfer_pb2.TransferOptions(progress_stream=progress_id),
        )
        stub = transfer_pb2_grpc.TransferStub(client.channel)
        client.call(stub.Transfer, request)
        if streams and report is not None:
            streams[0].finish()  # the last progress events are in once the server closed it
    finally:
        for stream in streams:
            stream.close()


def platforms_to_pull(wanted: Sequence[Platform], all_platforms: bool, host: Platform) -> PullOptions:
    """The platforms and unpacks of a pull as ctr 2.x chooses them: the given platforms (else the
    host's), or every platform with ``--all-platforms`` (the host's still unpacked)."""
    if all_platforms:
        return PullOptions(platforms=(), unpack=(host,))
    chosen = tuple(wanted) or (host,)
    return PullOptions(platforms=chosen, unpack=chosen)
