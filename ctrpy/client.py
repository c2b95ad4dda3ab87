"""A small synchronous client for ctrpyd (or containerd) over its unix socket.

It applies the address, the namespace header and a timeout once, and turns failed calls back
into :mod:`ctrpy.errors` kinds. The CLI, the tests and the benchmarks use it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import string
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import grpc

from ctrpy import clientstart, errors, namespaces
from ctrpy.api.containerd.services.containers.v1 import containers_pb2_grpc
from ctrpy.api.containerd.services.content.v1 import content_pb2_grpc
from ctrpy.api.containerd.services.diff.v1 import diff_pb2_grpc
from ctrpy.api.containerd.services.events.v1 import events_pb2_grpc
from ctrpy.api.containerd.services.images.v1 import images_pb2_grpc
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2_grpc
from ctrpy.api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2_grpc
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2_grpc
from ctrpy.api.containerd.services.version.v1 import version_pb2_grpc

DEFAULT_ADDRESS = "/run/ctrpy/ctrpy.sock"
MAX_MESSAGE = 16 * 1024 * 1024

# Leases made by the client expire on their own after this long if the client dies (containerd's
# WithLease uses the same default).
LEASE_EXPIRY = timedelta(hours=24)
EXPIRE_LABEL = "containerd.io/gc.expire"

R = TypeVar("R")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
_END = object()


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
        self.content = content_pb2_grpc.ContentStub(self.channel)
        self.snapshots = snapshots_pb2_grpc.SnapshotsStub(self.channel)
        self.diff = diff_pb2_grpc.DiffStub(self.channel)
        self.tasks = tasks_pb2_grpc.TasksStub(self.channel)
        # The lease that calls are made under (the containerd-lease header), set by lease().
        self.lease_id: str | None = None
        # Sent once, with the next unary call, when set: see ctrpy.clientstart (ctrpy run sets it).
        self.process_start_ns: int | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.lease_id:
            return ((namespaces.NAMESPACE_HEADER, self.namespace), (namespaces.LEASE_HEADER, self.lease_id))
        return ((namespaces.NAMESPACE_HEADER, self.namespace),)

    def call(self, method: Callable[..., R], request: Any, **kwargs: Any) -> R:
        """Make a unary call; a failure raises the matching :class:`ctrpy.errors.CtrpyError`."""
        metadata = self.metadata
        if self.process_start_ns is not None:
            metadata += ((clientstart.HEADER, str(self.process_start_ns)),)
            self.process_start_ns = None
        try:
            return method(request, metadata=metadata, timeout=self.timeout, **kwargs)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Make a server-streaming call and yield its messages, mapping errors the same way.

        A caller that stops iterating early cancels the call when the generator is closed.
        """
        call = method(request, metadata=self.metadata, timeout=self.timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None
        finally:
            call.cancel()

    def duplex(self, method: Callable[..., Any]) -> Duplex[Any, Any]:
        """Open a bidirectional stream (``Content.Write``) to be driven one request at a time."""
        return Duplex(method, self.metadata, self.timeout)

    @contextlib.contextmanager
    def lease(
        self,
        lease_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        expire: timedelta | None = LEASE_EXPIRY,
    ) -> Iterator[str]:
        """Create a lease, make every call inside the block under it, then delete it.

        Like containerd's ``WithLease``: the lease carries ``containerd.io/gc.expire`` (unless
        ``expire`` is None) so that it goes away on its own should the client die, and a block
        already inside a lease reuses that one. Raises what Leases.Create raises; a failure to
        delete the lease afterwards is ignored, as ctr does.
        """
        if self.lease_id is not None:
            yield self.lease_id
            return
        lease_id = lease_id or random_lease_id()
        wanted = dict(labels or {})
        if expire is not None:
            wanted[EXPIRE_LABEL] = (datetime.now(UTC) + expire).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.call(self.leases.Create, leases_pb2.CreateRequest(id=lease_id, labels=wanted))
        try:
            with self.using_lease(lease_id):
                yield lease_id
        finally:
            with contextlib.suppress(errors.CtrpyError):
                self.call(self.leases.Delete, leases_pb2.DeleteRequest(id=lease_id))

    @contextlib.contextmanager
    def using_lease(self, lease_id: str) -> Iterator[str]:
        """Make the calls inside the block under the existing lease ``lease_id``."""
        previous = self.lease_id
        self.lease_id = lease_id
        try:
            yield lease_id
        finally:
            self.lease_id = previous

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_LEASE_ALPHABET = string.ascii_letters + string.digits


def random_lease_id() -> str:
    """A fresh lease id in containerd's shape, ``<nanoseconds>-<random>`` (``321172841-Z9nk``).

    Only letters and digits follow the dash, so the id is also a valid identifier.
    """
    suffix = "".join(secrets.choice(_LEASE_ALPHABET) for _ in range(4))
    return f"{time.time_ns() % 1_000_000_000}-{suffix}"


class Duplex(Generic[Req, Resp]):
    """One bidirectional gRPC stream used as a request/response exchange.

    :meth:`send` puts one request on the stream and waits for the one response the server
    answers it with (the Content.Write protocol); :meth:`close` half-closes the sending side.
    Failures raise :class:`ctrpy.errors.CtrpyError` kinds.
    """

    def __init__(self, method: Callable[..., Any], metadata: tuple[tuple[str, str], ...],
                 timeout: float | None) -> None:
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closed = False
        self._call = method(self._outgoing(), metadata=metadata, timeout=timeout)

    def _outgoing(self) -> Iterator[Any]:
        while True:
            item = self._requests.get()
            if item is _END:
                return
            yield item

    def send(self, request: Req) -> Resp:
        """Send ``request`` and return the server's reply to it."""
        if self._closed:
            raise errors.FailedPrecondition("stream already closed")
        self._requests.put(request)
        try:
            response: Resp = next(self._call)
        except StopIteration:
            raise errors.Unavailable("stream ended before the server answered") from None
        except grpc.RpcError as exc:
            self._closed = True
            raise errors.from_grpc(exc) from None
        return response

    def close(self) -> None:
        """Half-close the stream and let the server finish it; trailing replies are dropped.

        Errors at this point are ignored: every answer that mattered was already received.
        """
        if self._closed:
            return
        self._closed = True
        self._requests.put(_END)
        try:
            for _ in self._call:
                pass
        except grpc.RpcError:
            pass

    def cancel(self) -> None:
        """Abandon the stream at once."""
        if not self._closed:
            self._closed = True
            self._requests.put(_END)
        self._call.cancel()
