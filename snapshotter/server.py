"""One snapshotter served as ``containerd.services.snapshots.v1.Snapshots``, for proxy clients.

This is what ``ctrpy-snapshotter`` runs: the gRPC face of a single backend, in its own process,
the way containerd's proxy plugins are served. It is namespace-unaware (the client, ctrpyd or
containerd, maps its namespaces onto keys) and ignores the ``snapshotter`` field of requests:
there is only one. Errors of :mod:`ctrpy.errors` leave as their gRPC codes with their messages,
so :class:`~ctrpy.snapshotter.proxy.ProxySnapshotter` can raise the same kinds again.

The server is synchronous (a thread pool), since the backends are: each call runs in a worker.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog
from google.protobuf import empty_pb2

from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as api
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as api_grpc
from ctrpy.errors import CtrpyError, Unavailable, to_grpc_code

from .base import Snapshotter
from .wire import LIST_BATCH, info_from_proto, info_to_proto, mounts_to_proto, usage_to_proto

__all__ = ["SnapshotsService", "make_server"]

log = structlog.get_logger(__name__)

if TYPE_CHECKING:
    Context = grpc.ServicerContext
else:
    Context = Any

T = TypeVar("T")

_MAX_MESSAGE = 16 * 1024 * 1024


def _abort(context: Context, error: Exception, method: str) -> None:
    if isinstance(error, CtrpyError):
        log.debug("call failed", method=method, code=error.code.name, error=error.message)
        context.abort(to_grpc_code(error), error.message)
    log.exception("call crashed", method=method, exc_info=error)
    context.abort(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")


def _unary(fn: Callable[[Any, Any, Context], T]) -> Callable[[Any, Any, Context], T]:
    @functools.wraps(fn)
    def handler(self: Any, request: Any, context: Context) -> T:
        try:
            return fn(self, request, context)
        except Exception as error:
            _abort(context, error, fn.__name__)
            raise  # not reached: abort raises

    return handler


class SnapshotsService(api_grpc.SnapshotsServicer):
    """The Snapshots API over ``backend``; the request's snapshotter name is not consulted."""

    def __init__(self, backend: Snapshotter) -> None:
        self.backend = backend

    @_unary
    def Prepare(self, request: api.PrepareSnapshotRequest, context: Context) -> api.PrepareSnapshotResponse:
        mounts = self.backend.prepare(request.key, request.parent, dict(request.labels))
        return api.PrepareSnapshotResponse(mounts=mounts_to_proto(mounts))

    @_unary
    def View(self, request: api.ViewSnapshotRequest, context: Context) -> api.ViewSnapshotResponse:
        mounts = self.backend.view(request.key, request.parent, dict(request.labels))
        return api.ViewSnapshotResponse(mounts=mounts_to_proto(mounts))

    @_unary
    def Mounts(self, request: api.MountsRequest, context: Context) -> api.MountsResponse:
        return api.MountsResponse(mounts=mounts_to_proto(self.backend.mounts(request.key)))

    @_unary
    def Commit(self, request: api.CommitSnapshotRequest, context: Context) -> empty_pb2.Empty:
        self.backend.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    @_unary
    def Remove(self, request: api.RemoveSnapshotRequest, context: Context) -> empty_pb2.Empty:
        self.backend.remove(request.key)
        return empty_pb2.Empty()

    @_unary
    def Stat(self, request: api.StatSnapshotRequest, context: Context) -> api.StatSnapshotResponse:
        return api.StatSnapshotResponse(info=info_to_proto(self.backend.stat(request.key)))

    @_unary
    def Update(self, request: api.UpdateSnapshotRequest, context: Context) -> api.UpdateSnapshotResponse:
        updated = self.backend.update(info_from_proto(request.info), list(request.update_mask.paths))
        return api.UpdateSnapshotResponse(info=info_to_proto(updated))

    def List(
        self, request: api.ListSnapshotsRequest, context: Context
    ) -> Iterator[api.ListSnapshotsResponse]:
        try:
            infos = list(self.backend.walk(list(request.filters)))
        except Exception as error:
            _abort(context, error, "List")
            raise  # not reached
        for start in range(0, len(infos), LIST_BATCH):
            batch = infos[start : start + LIST_BATCH]
            yield api.ListSnapshotsResponse(info=[info_to_proto(i) for i in batch])

    @_unary
    def Usage(self, request: api.UsageRequest, context: Context) -> api.UsageResponse:
        return usage_to_proto(self.backend.usage(request.key))

    @_unary
    def Cleanup(self, request: api.CleanupRequest, context: Context) -> empty_pb2.Empty:
        self.backend.cleanup()
        return empty_pb2.Empty()


def _claim_socket(address: str) -> None:
    """Remove a stale socket file at ``address``; refuse when a live server answers there."""
    if not os.path.lexists(address):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(address)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(address)
    else:
        raise Unavailable(f"address {address} is in use by a running server")
    finally:
        probe.close()


def make_server(backend: Snapshotter, address: str, workers: int = 32) -> grpc.Server:
    """A started server for ``backend`` on the unix socket ``address``, reachable by its owner only.

    A stale socket file at ``address`` is replaced; a live one is Unavailable. The caller stops the server
    (``server.stop(grace)``) and then closes the backend.
    """
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshots"),
        options=[
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.max_send_message_length", _MAX_MESSAGE),
        ],
    )
    api_grpc.add_SnapshotsServicer_to_server(SnapshotsService(backend), server)
    _claim_socket(address)
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{address}")
        server.start()
    finally:
        os.umask(old_umask)
    return server
