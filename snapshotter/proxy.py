"""A snapshotter in another process: the :class:`Snapshotter` protocol over the Snapshots gRPC API.

``ProxySnapshotter(address)`` talks to any server of ``containerd.services.snapshots.v1.Snapshots``
on a unix socket (``ctrpy-snapshotter``, or a containerd proxy plugin's server) and behaves like
a local implementation: the same methods, the same error kinds (mapped back from the gRPC status
with :func:`ctrpy.errors.from_grpc`), the same mounts, passed through unchanged. Like containerd's
proxy plugins it is namespace-unaware: the server sees the keys it is given.

The client is synchronous and thread-safe, like the local snapshotters, so callers run it from
worker threads. A server that is not (or no longer) there gives Unavailable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from ctrpy import errors
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as api
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as api_grpc
from ctrpy.errors import InvalidArgument, Unavailable
from ctrpy.mount import Mount

from .types import Info, Usage
from .wire import info_from_proto, info_to_proto, mounts_from_proto, usage_from_proto

__all__ = ["ProxySnapshotter", "channel_target"]

R = TypeVar("R")

# Snapshots.List sends info in batches; a stack of many labelled layers stays far below this.
_MAX_MESSAGE = 16 * 1024 * 1024


def channel_target(address: str) -> str:
    """The grpc target for ``address``: a socket path, or an address already as ``unix:...``."""
    return address if address.startswith("unix:") else f"unix:{address}"


class ProxySnapshotter:
    """The snapshotter served at ``address`` (a unix socket path).

    ``name`` is sent as the ``snapshotter`` field of every request (servers of one snapshotter
    ignore it); ``timeout`` bounds each call, in seconds (None: no deadline).
    """

    def __init__(self, address: str, name: str = "", timeout: float | None = None) -> None:
        self.address = address
        self.name = name
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = grpc.insecure_channel(
            channel_target(address),
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                ("grpc.max_send_message_length", _MAX_MESSAGE),
            ],
        )
        self._stub = api_grpc.SnapshotsStub(self._channel)

    def _call(self, method: Callable[..., R], request: Any) -> R:
        if self._channel is None:
            raise Unavailable(f"snapshotter proxy {self.address} is closed")
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    # --- the Snapshotter protocol -------------------------------------------------------

    def stat(self, key: str) -> Info:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.stat`."""
        response = self._call(self._stub.Stat, api.StatSnapshotRequest(snapshotter=self.name, key=key))
        return info_from_proto(response.info)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.update`."""
        request = api.UpdateSnapshotRequest(
            snapshotter=self.name,
            info=info_to_proto(info),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        return info_from_proto(self._call(self._stub.Update, request).info)

    def usage(self, key: str) -> Usage:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.usage`."""
        return usage_from_proto(
            self._call(self._stub.Usage, api.UsageRequest(snapshotter=self.name, key=key))
        )

    def mounts(self, key: str) -> list[Mount]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.mounts`."""
        response = self._call(self._stub.Mounts, api.MountsRequest(snapshotter=self.name, key=key))
        return mounts_from_proto(response.mounts)

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.prepare`."""
        request = api.PrepareSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        return mounts_from_proto(self._call(self._stub.Prepare, request).mounts)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.view`."""
        request = api.ViewSnapshotRequest(
            snapshotter=self.name, key=key, parent=parent, labels=dict(labels or {})
        )
        return mounts_from_proto(self._call(self._stub.View, request).mounts)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.commit`."""
        request = api.CommitSnapshotRequest(
            snapshotter=self.name, name=name, key=key, labels=dict(labels or {})
        )
        self._call(self._stub.Commit, request)

    def remove(self, key: str) -> None:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.remove`."""
        self._call(self._stub.Remove, api.RemoveSnapshotRequest(snapshotter=self.name, key=key))

    def walk(self, filters: Sequence[str] = ()) -> Iterator[Info]:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.walk`.

        The whole stream is read before returning, so a bad filter raises here and the
        caller may make other calls while iterating.
        """
        if isinstance(filters, str):
            raise InvalidArgument("filters must be a sequence of strings, not one string")
        request = api.ListSnapshotsRequest(snapshotter=self.name, filters=list(filters))

        def read_all(request: api.ListSnapshotsRequest, timeout: float | None) -> list[Info]:
            return [
                info_from_proto(i) for batch in self._stub.List(request, timeout=timeout) for i in batch.info
            ]

        return iter(self._call(read_all, request))

    def cleanup(self) -> None:
        """See :meth:`ctrpy.snapshotter.base.Snapshotter.cleanup`."""
        self._call(self._stub.Cleanup, api.CleanupRequest(snapshotter=self.name))

    def close(self) -> None:
        """Close the connection (not the server). Idempotent; later calls raise Unavailable."""
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if TYPE_CHECKING:
    from .base import Snapshotter

    def _conforms(implementation: ProxySnapshotter) -> Snapshotter:
        # mypy proves here that ProxySnapshotter satisfies the Snapshotter protocol.
        return implementation
