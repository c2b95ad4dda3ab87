"""A small synchronous client for ctrpyd (or containerd) over its unix socket.

It applies the address, the namespace header and a timeout once, and turns failed calls back
into :mod:`ctrpy.errors` kinds. The CLI, the tests and the benchmarks use it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from ctrpy import errors, namespaces
from ctrpy.api.containerd.services.containers.v1 import containers_pb2_grpc
from ctrpy.api.containerd.services.events.v1 import events_pb2_grpc
from ctrpy.api.containerd.services.images.v1 import images_pb2_grpc
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2_grpc
from ctrpy.api.containerd.services.leases.v1 import leases_pb2_grpc
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2_grpc
from ctrpy.api.containerd.services.version.v1 import version_pb2_grpc

DEFAULT_ADDRESS = "/run/ctrpy/ctrpy.sock"
MAX_MESSAGE = 16 * 1024 * 1024

R = TypeVar("R")


def default_address() -> str:
    return os.environ.get("CTRPY_ADDRESS") or DEFAULT_ADDRESS


def default_namespace() -> str:
    return os.environ.get("CTRPY_NAMESPACE") or namespaces.DEFAULT


class Client:
    """A connection to one daemon, in one namespace."""

    def __init__(
        self, address: str | None = None, namespace: str | None = None, timeout: float | None = None
    ) -> None:
        self.address = address or default_address()
        self.namespace = namespace or default_namespace()
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            f"unix:{self.address}",
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        self.version = version_pb2_grpc.VersionStub(self.channel)
        self.introspection = introspection_pb2_grpc.IntrospectionStub(self.channel)
        self.namespaces = namespace_pb2_grpc.NamespacesStub(self.channel)
        self.containers = containers_pb2_grpc.ContainersStub(self.channel)
        self.images = images_pb2_grpc.ImagesStub(self.channel)
        self.leases = leases_pb2_grpc.LeasesStub(self.channel)
        self.events = events_pb2_grpc.EventsStub(self.channel)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((namespaces.NAMESPACE_HEADER, self.namespace),)

    def call(self, method: Callable[..., R], request: Any, **kwargs: Any) -> R:
        """Make a unary call; a failure raises the matching :class:`ctrpy.errors.CtrpyError`."""
        try:
            return method(request, metadata=self.metadata, timeout=self.timeout, **kwargs)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Make a server-streaming call and yield its messages, mapping errors the same way."""
        try:
            yield from method(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
