"""gRPC server metrics with go-grpc-prometheus's names and meaning, as containerd serves them.

:class:`GrpcStats` keeps per-method counters in plain ints on the event loop (a call costs a
few dict look-ups and additions, and a ``perf_counter`` pair when the latency histogram is
on); :mod:`.render` turns a copy of them into ``grpc_server_started_total``,
``grpc_server_handled_total{grpc_code}``, ``grpc_server_msg_received_total``,
``grpc_server_msg_sent_total`` and ``grpc_server_handling_seconds``, each labelled
``grpc_type``, ``grpc_service``, ``grpc_method``. As go-grpc-prometheus does:

- every method of the served services is reported from the start, at zero (with a
  ``grpc_server_handled_total`` series per status code), once :meth:`GrpcStats.preregister`
  has been told the services;
- a unary call counts one message received when it starts and one sent when it succeeds;
  streams count each message;
- codes are Go's names (``OK``, ``NotFound``, ``Canceled``...);
- the histogram uses Prometheus' default buckets (containerd enables it without options).

No Prometheus library is imported here: this module is on the call path, the rendering is not.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pool

from ..services.edge import Context, Handler, WrappingInterceptor

#: prometheus.DefBuckets, which go-grpc-prometheus uses unless told otherwise.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNARY, CLIENT_STREAM, SERVER_STREAM, BIDI_STREAM = "unary", "client_stream", "server_stream", "bidi_stream"

#: grpc-go's codes.Code.String(), the spelling containerd's series carry.
GO_CODES = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled", grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument", grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound", grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied", grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition", grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange", grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal", grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss", grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}  # fmt: skip
# grpc.aio's context.code() answers the core's integer; set_code() takes either.
_CODE_NAMES: dict[object, str] = {code: name for code, name in GO_CODES.items()}
_CODE_NAMES.update({code.value[0]: name for code, name in GO_CODES.items()})


def _code(context: Context) -> str:
    """The call's status code as Go spells it (OK when none was set)."""
    code = context.code()
    return "OK" if code is None else _CODE_NAMES.get(code, "Unknown")


def _failed_code(context: Context) -> str:
    """The code of an aborted call: the edge sets it before aborting; else UNKNOWN."""
    code = _code(context)
    return "Unknown" if code == "OK" else code


def _cancelled_code(context: Context) -> str:
    """A cancelled call: its deadline passed, or the client went away."""
    try:
        remaining = context.time_remaining()
    except Exception:  # the call is already torn down
        return "Canceled"
    return "DeadlineExceeded" if remaining is not None and remaining <= 0 else "Canceled"


@dataclass
class MethodStats:
    """One method's counters since ctrpyd started."""

    service: str
    method: str
    type: str
    started: int = 0
    received: int = 0
    sent: int = 0
    handled: dict[str, int] = field(default_factory=dict)  # Go code name -> calls
    buckets: list[int] | None = None  # calls per bucket (not cumulative), the last one past 10 s
    seconds: float = 0.0

    def copy(self) -> MethodStats:
        return MethodStats(self.service, self.method, self.type, self.started, self.received, self.sent,
                           dict(self.handled), list(self.buckets) if self.buckets is not None else None,
                           self.seconds)

    def finish(self, code: str, began: float) -> None:
        self.handled[code] = self.handled.get(code, 0) + 1
        if self.buckets is not None:
            elapsed = time.perf_counter() - began
            self.buckets[bisect.bisect_left(BUCKETS, elapsed)] += 1
            self.seconds += elapsed


def _kind(client_streaming: bool, server_streaming: bool) -> str:
    if client_streaming:
        return BIDI_STREAM if server_streaming else CLIENT_STREAM
    return SERVER_STREAM if server_streaming else UNARY


class GrpcStats:
    """The counters of every method called (or pre-registered). Used on the event loop only."""

    def __init__(self, histogram: bool) -> None:
        self.histogram = histogram
        self.methods: dict[str, MethodStats] = {}

    def method(self, full_method: str, kind: str) -> MethodStats:
        """The counters of ``/package.Service/Method``, made at its first use."""
        found = self.methods.get(full_method)
        if found is None:
            service, _, name = full_method.lstrip("/").rpartition("/")
            found = MethodStats(service, name, kind, buckets=[0] * (len(BUCKETS) + 1) if self.histogram else None)
            self.methods[full_method] = found
        return found

    def preregister(self, services: Iterable[str]) -> None:
        """Report every method of ``services`` (full names) at zero from now on, as
        go-grpc-prometheus' ``Register`` does. Services whose descriptors are not loaded (the
        CRI's, built at its first call) appear at their first call instead."""
        pool = descriptor_pool.Default()
        for name in services:
            try:
                service = pool.FindServiceByName(name)
            except KeyError:
                continue
            for method in service.methods:
                kind = _kind(bool(getattr(method, "client_streaming", False)),
                             bool(getattr(method, "server_streaming", False)))
                self.method(f"/{service.full_name}/{method.name}", kind)

    def snapshot(self) -> list[MethodStats]:
        """A copy, for rendering on another thread."""
        return [stats.copy() for stats in self.methods.values()]

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)


async def _counted(requests: AsyncIterator[Any], stats: MethodStats) -> AsyncIterator[Any]:
    async for request in requests:
        stats.received += 1
        yield request


def _begin(stats: MethodStats, request: Any, streaming_request: bool) -> tuple[Any, float]:
    """Count a call's start and its request (each message of a request stream as it comes);
    the request to pass on, and when the call began."""
    stats.started += 1
    if streaming_request:
        request = _counted(request, stats)
    else:
        stats.received += 1
    return request, time.perf_counter()


def _wrap_unary(stats: MethodStats, inner: Callable[..., Awaitable[Any]], streaming_request: bool
                ) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        request, began = _begin(stats, request, streaming_request)
        code = "Unknown"
        try:
            response = await inner(request, context)
            code = _code(context)
            if code == "OK":
                stats.sent += 1
            return response
        except grpc.aio.AbortError:
            code = _failed_code(context)
            raise
        except asyncio.CancelledError:
            code = _cancelled_code(context)
            raise
        finally:
            stats.finish(code, began)

    return handler


def _wrap_streaming(stats: MethodStats, inner: Callable[..., Any], streaming_request: bool
                    ) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        request, began = _begin(stats, request, streaming_request)
        code = "Unknown"
        try:
            responses = inner(request, context)
            if inspect.isawaitable(responses):  # a handler that writes with context.write
                await responses
            else:
                async for item in responses:
                    stats.sent += 1
                    yield item
            code = _code(context)
        except grpc.aio.AbortError:
            code = _failed_code(context)
            raise
        except (asyncio.CancelledError, GeneratorExit):  # the client went away, or its deadline passed
            code = _cancelled_code(context)
            raise
        finally:
            stats.finish(code, began)

    return handler


class MetricsInterceptor(WrappingInterceptor):
    """Counts every call into :class:`GrpcStats`. It goes first in the chain, outside the
    edge, so it sees the status code the edge translated an error into."""

    def __init__(self, stats: GrpcStats) -> None:
        super().__init__()
        self._stats = stats

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        kind = _kind(handler.request_streaming, handler.response_streaming)
        stats = self._stats.method(method, kind)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(stats, handler.unary_unary, False), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(stats, handler.stream_unary, True), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                cast(Any, _wrap_streaming(stats, handler.unary_stream, False)), **kwargs)
        return grpc.stream_stream_rpc_method_handler(
            cast(Any, _wrap_streaming(stats, cast(Callable[..., Any], handler.stream_stream), True)), **kwargs)
