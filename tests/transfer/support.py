"""Transfer calls built by hand, for the request fields ``ctrpy images pull`` does not set
(manifest_limit, extra_references, resolver headers, http_debug and its logs stream, an auth
stream that records what it is asked)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf import any_pb2
from google.protobuf.message import Message

from ctrpy.api.containerd.types.transfer import imagestore_pb2, registry_pb2
from ctrpy.api.containerd.types.transfer import streaming_pb2 as data_pb2
from ctrpy.client import Client
from ctrpy.images import transfer
from ctrpy.images.transfer import Progress, PullOptions

#: The window a logs-stream reader grants at a time (containerd's reader: 64 KiB).
WINDOW = 64 * 1024


def _name(message: any_pb2.Any) -> str:
    return message.type_url.rsplit("/", 1)[-1]


def pull_with(client: Client, reference: str, store: imagestore_pb2.ImageStore, *,
              resolver: Callable[[registry_pb2.RegistryResolver], None] | None = None,
              events: list[Progress] | None = None) -> None:
    """One Transfer call OCIRegistry(reference, plain HTTP) -> ``store``; ``resolver`` may
    change the resolver message before it is sent; progress events go to ``events``."""

    def pair(registry: registry_pb2.OCIRegistry) -> tuple[Message, Message]:
        if resolver is not None:
            resolver(registry.resolver)
        return registry, store

    report = events.append if events is not None else None
    transfer._run(client, reference, PullOptions(plain_http=True), report, pair)


@dataclass
class LogsReader:
    """A logs stream opened on the Streaming service: collects the Data the server sends,
    granting ``WINDOW`` bytes at a time (none at all with ``grant=False``)."""

    client: Client
    grant: bool = True
    data: bytearray = field(default_factory=bytearray)
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._granted = 0
        self._lock = threading.Lock()
        self.stream = transfer._Stream(self.client, "http-debug-logs", self._on_message)
        if self.grant:
            self._grant()

    def _grant(self) -> None:
        self.stream.send(data_pb2.WindowUpdate(update=WINDOW))
        self._granted += WINDOW

    def _on_message(self, stream: object, message: any_pb2.Any) -> None:
        if _name(message) != data_pb2.Data.DESCRIPTOR.full_name:
            return
        with self._lock:
            self.data += data_pb2.Data.FromString(message.value).data
            if self.grant and self._granted - len(self.data) < WINDOW:
                self._grant()

    def finish(self, timeout: float = 30.0) -> str:
        """Wait for the server to end the stream (then let it go); the text received."""
        self.stream._thread.join(timeout)
        if not self.stream._thread.is_alive():
            self.ended.set()
        self.stream.close()
        return self.data.decode("utf-8", "replace")

    def ended_by_server(self) -> bool:
        return self.ended.is_set()


@dataclass
class AuthRecorder:
    """An auth stream that answers every AuthRequest with ``user`` and keeps the hosts asked."""

    client: Client
    user: tuple[str, str]
    hosts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stream = transfer._Stream(self.client, "creds", self._on_message)

    def _on_message(self, stream: object, message: any_pb2.Any) -> None:
        if _name(message) != registry_pb2.AuthRequest.DESCRIPTOR.full_name:
            return
        self.hosts.append(registry_pb2.AuthRequest.FromString(message.value).host)
        self.stream.send(registry_pb2.AuthResponse(authType=registry_pb2.CREDENTIALS, username=self.user[0],
                                                   secret=self.user[1]))

    def close(self) -> None:
        self.stream.close()
