"""The OpenTelemetry side of ctrpyd's tracing, imported only once ``[tracing] endpoint`` is set.

Three pieces, all owned by :class:`Tracing`:

- a server interceptor that makes one SERVER span per RPC, named as containerd's otelgrpc
  names them (``containerd.services.tasks.v1.Tasks/Create``), current while the handler runs so
  that what the handler does (store calls, shim calls, CNI, pulls) nests under it; the calls on
  ctrpyd's ttrpc socket (the shims' events, ``Events/Forward``) get the same
  (:meth:`Tracing.ttrpc_call`);
- for the ttrpc calls to shims (:meth:`Tracing.shim_call`): a CLIENT span per call, with the
  W3C ``traceparent`` sent in the request's metadata, and the shim's own steps of a Create or
  Start (the rootfs mount, the stdio, ``runc create``, ``runc start``) recorded as its child
  spans. The shim makes no spans: it already times those steps and returns them in the answer
  (``steps`` of CreateResponse and StartResponse, kept for the start-up timeline), and ctrpyd
  turns them into spans. That is the cheaper way for the shim, of which there is one per
  container: OpenTelemetry's SDK and OTLP exporter in each would add several MiB of modules, an
  export thread and a collector connection to every shim, for a few timestamps;
- client sessions (:class:`Sessions`), which put the separate RPCs of one client operation into
  one trace. A client that traces sends ``traceparent`` and its context is used as it is. The
  stock ``ctr`` sends none, so ctrpyd groups its calls itself, by what ties them together on the
  wire: ``ctr run`` makes a lease (Leases.Create), sends it with every call up to
  Containers.Create, and names the container in every call after it (Tasks.Create/Start/Wait/
  Delete, Snapshots.Mounts/Remove, Containers.Get/Delete; and the shim's task events, forwarded
  to ctrpyd's ttrpc socket with Events/Forward, name it inside the event). A session starts at Leases.Create
  (or at a Containers.Create without a lease), takes in every call that carries its lease or
  names its container, and ends, with its root span, once the lease and the container are both
  deleted. Calls before the lease exists (ctr's image lookups) stay traces of their own.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ctrpy import namespaces
from ctrpy.errors import CtrpyError, to_grpc_code
from ctrpy.shim import steps as shim_steps
from ctrpy.shim.steps import StepTuple

from ..services.edge import Context, Handler, WrappingInterceptor

if TYPE_CHECKING:
    from ctrpy.manager.config import TracingConfig

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: Seconds one export may take; also bounds the flush when ctrpyd stops.
EXPORT_TIMEOUT = 5.0
#: Open client sessions kept at most; past that the oldest is ended.
SESSION_LIMIT = 1024

LEASES_CREATE = "/containerd.services.leases.v1.Leases/Create"
LEASES_DELETE = "/containerd.services.leases.v1.Leases/Delete"
CONTAINERS_CREATE = "/containerd.services.containers.v1.Containers/Create"
CONTAINERS_DELETE = "/containerd.services.containers.v1.Containers/Delete"
EVENTS_PUBLISH = "/containerd.services.events.v1.Events/Publish"
EVENTS_FORWARD = "/containerd.services.events.v1.Events/Forward"
TTRPC_FORWARD = "/containerd.services.events.ttrpc.v1.Events/Forward"  # the shims' events
CRI_PREFIX = "/runtime.v1."
#: The W3C Trace Context header.
TRACEPARENT = "traceparent"

Key = tuple[str, str, str]  # ("lease" | "container", namespace, id)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def container_of(method: str, request: object) -> str:
    """The container a containerd API call is about, or "" (a snapshot key counts: ctr uses
    the container id as its rootfs snapshot's key)."""
    if method.startswith("/containerd.services.tasks.v1.Tasks/"):
        return _text(getattr(request, "container_id", ""))
    if method.startswith("/containerd.services.containers.v1.Containers/"):
        if method.endswith(("/Create", "/Update")):
            return _text(getattr(getattr(request, "container", None), "id", ""))
        return _text(getattr(request, "id", ""))
    if method.startswith("/containerd.services.snapshots.v1.Snapshots/"):
        return _text(getattr(request, "key", ""))
    if method == EVENTS_PUBLISH:  # a task event: the container is in the event itself
        return _task_event_container(getattr(request, "event", None))
    if method in (TTRPC_FORWARD, EVENTS_FORWARD):  # a shim's task event, in its envelope
        return _task_event_container(getattr(getattr(request, "envelope", None), "event", None))
    return ""


def _task_event_container(event: object) -> str:
    """The ``container_id`` of a containerd.events.Task* event packed in an Any, or ""."""
    type_url = _text(getattr(event, "type_url", ""))
    name = type_url.rpartition("/")[2]
    if not name.startswith("containerd.events.Task"):
        return ""
    from ctrpy.api.containerd.events import task_pb2

    message_type = getattr(task_pb2, name.removeprefix("containerd.events."), None)
    if message_type is None:
        return ""
    try:
        return _text(message_type.FromString(getattr(event, "value", b"")).container_id)
    except Exception:  # a malformed event: the Publish itself says so
        return ""


@dataclass(eq=False)
class _Session:
    root: Span
    keys: set[Key] = field(default_factory=set)


class Sessions:
    """The open client sessions (see the module docstring). Event loop only."""

    def __init__(self, tracer: trace.Tracer, limit: int = SESSION_LIMIT) -> None:
        self._tracer = tracer
        self._limit = limit
        self._by_key: dict[Key, _Session] = {}
        self._open: dict[_Session, None] = {}  # insertion-ordered: the oldest first

    def __len__(self) -> int:
        return len(self._open)

    def parent(self, method: str, namespace: str, lease: str, container: str,
               request: object) -> tuple[_Session | None, bool]:
        """The session a call belongs under, or None; and whether the call started it (a
        Leases.Create, or a Containers.Create outside any session)."""
        session = self._by_key.get(("lease", namespace, lease)) if lease else None
        if session is None and container:
            session = self._by_key.get(("container", namespace, container))
        if session is not None:
            return session, False
        lease_id = _text(getattr(request, "id", "")) if method == LEASES_CREATE else ""
        if lease_id:
            known = self._by_key.get(("lease", namespace, lease_id))  # a lease created twice
            return (known, False) if known is not None else (self._start(("lease", namespace, lease_id)), True)
        if method == CONTAINERS_CREATE and container:
            return self._start(("container", namespace, container)), True
        return None, False

    def finished(self, method: str, namespace: str, request: object, session: _Session | None,
                 started: bool, ok: bool) -> None:
        """A call ended: a created container joins its session, a deleted lease or container
        leaves it; a session whose first call failed (a lease or container that already
        existed) ends at once."""
        if not ok:
            if started and session is not None and session in self._open:
                self._end(session)
            return
        if method == CONTAINERS_CREATE and session is not None and session in self._open:
            if container := container_of(method, request):
                self._bind(session, ("container", namespace, container))
        elif method == CONTAINERS_DELETE:
            self._unbind(("container", namespace, _text(getattr(request, "id", ""))))
        elif method == LEASES_DELETE:
            self._unbind(("lease", namespace, _text(getattr(request, "id", ""))))

    def close(self) -> None:
        """End every open session (ctrpyd is stopping)."""
        for session in list(self._open):
            self._end(session)

    def _start(self, key: Key) -> _Session:
        kind, namespace, ident = key
        root = self._tracer.start_span(
            "ctrpy.session", context=otel_context.Context(),  # an empty context: a new trace
            attributes={"containerd.namespace": namespace, f"containerd.{kind}": ident},
        )  # fmt: skip
        session = _Session(root)
        self._open[session] = None
        self._bind(session, key)
        while len(self._open) > self._limit:
            self._end(next(iter(self._open)))
        return session

    def _bind(self, session: _Session, key: Key) -> None:
        if self._by_key.get(key) is session:
            return
        previous = self._by_key.get(key)
        if previous is not None:  # a container id reused while an old session holds it
            self._unbind(key)
        self._by_key[key] = session
        session.keys.add(key)
        if key[0] == "container":
            session.root.set_attribute("containerd.container", key[2])

    def _unbind(self, key: Key) -> None:
        session = self._by_key.pop(key, None)
        if session is None:
            return
        session.keys.discard(key)
        if not session.keys:
            self._end(session)

    def _end(self, session: _Session) -> None:
        for key in session.keys:
            self._by_key.pop(key, None)
        session.keys.clear()
        self._open.pop(session, None)
        session.root.end()


@dataclass(eq=False)
class RpcCall:
    """One RPC being traced: its span, namespace, and the session it went into (if any)."""

    method: str
    namespace: str
    span: Span
    session: _Session | None
    started: bool  # the call started that session


class Tracing:
    """The tracer provider, the exporter and the interceptors of one ctrpyd."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint, timeout=EXPORT_TIMEOUT)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter, export_timeout_millis=EXPORT_TIMEOUT * 1000)
        )
        self.tracer = self.provider.get_tracer("ctrpy.manager")
        self.sessions = Sessions(self.tracer)
        self.propagator = TraceContextTextMapPropagator()
        log.info("tracing on", endpoint=config.endpoint, sampling_ratio=config.sampling_ratio)

    def shutdown(self) -> None:
        """End the open sessions and send what is buffered (at most the export timeout)."""
        self.sessions.close()
        self.provider.shutdown()

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        return _ServerInterceptor(self)

    def span(self, name: str, attributes: Mapping[str, str | int | float | bool]) -> AbstractContextManager[Any]:
        """A child of the current span; nothing outside a traced call (a store call made by the
        garbage collector, say, would otherwise start a trace of its own every time)."""
        if not trace.get_current_span().get_span_context().is_valid:
            return _nothing()
        return self.tracer.start_as_current_span(name, attributes=dict(attributes))

    # --- RPC spans --------------------------------------------------------------------

    def start_rpc(self, method: str, request: object, context: Context) -> RpcCall:
        """The SERVER span of one call (not yet current), under the client's own trace context
        when it sent one, else under its session's root, else in a new trace."""
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        namespace = metadata.get(namespaces.NAMESPACE_HEADER) or namespaces.DEFAULT
        return self._start_server_span(method, request, metadata, namespace, "grpc")

    def _start_server_span(self, method: str, request: object, metadata: Mapping[str, str], namespace: str,
                           system: str) -> RpcCall:
        service, _, name = method.lstrip("/").rpartition("/")
        attributes: dict[str, str | int] = {"rpc.system": system, "rpc.service": service, "rpc.method": name}
        container = container_of(method, request)
        if container:
            attributes["containerd.container"] = container
        parent = otel_context.Context()  # empty: a new trace
        session, started = None, False
        extracted = self.propagator.extract(metadata) if TRACEPARENT in metadata else None
        if extracted is not None and trace.get_current_span(extracted).get_span_context().is_valid:
            parent = extracted
        elif not method.startswith(CRI_PREFIX):
            lease = metadata.get(namespaces.LEASE_HEADER) or ""
            session, started = self.sessions.parent(method, namespace, lease, container, request)
            if session is not None:
                parent = trace.set_span_in_context(session.root, parent)
        span = self.tracer.start_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=attributes)
        return RpcCall(method, namespace, span, session, started)

    def finish_rpc(self, call: RpcCall, request: object, context: Context, error: BaseException | None) -> None:
        """Set the call's status code on its span and end it; then tell its session."""
        self._finish_server_span(call, request, _status_code(context, error))

    def _finish_server_span(self, call: RpcCall, request: object, code: grpc.StatusCode) -> None:
        span = call.span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
        if call.session is not None or call.method in (CONTAINERS_DELETE, LEASES_DELETE):  # after: roots end last
            self.sessions.finished(call.method, call.namespace, request, call.session, call.started,
                                   code is grpc.StatusCode.OK)

    # --- shim calls -------------------------------------------------------------------

    @contextmanager
    def ttrpc_call(self, service: str, method: str, namespace: str, request: object,
                   metadata: Mapping[str, Sequence[str]]) -> Iterator[None]:
        """The SERVER span of one call on ctrpyd's ttrpc socket, current around the handler:
        ``namespace`` is the one the call is about (a Forward's envelope names it), the client's
        ``traceparent`` wins, else the call joins its container's session as a gRPC call does."""
        first = {key: values[0] for key, values in metadata.items() if values}
        call = self._start_server_span(f"/{service}/{method}", request, first, namespace, "ttrpc")
        token = otel_context.attach(trace.set_span_in_context(call.span))
        code = grpc.StatusCode.OK
        try:
            yield
        except CtrpyError as error:
            code = to_grpc_code(error)
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except BaseException:
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            otel_context.detach(token)
            self._finish_server_span(call, request, code)

    async def shim_call(self, service: str, method: str,
                        send: Callable[[Sequence[tuple[str, str]]], Awaitable[T]]) -> T:
        """One ttrpc call to a shim, ``send(metadata)``, as a CLIENT span (see the module
        docstring); outside a traced call, sent as it is."""
        if not trace.get_current_span().get_span_context().is_valid:
            return await send(())  # not part of a traced call
        attributes = {"rpc.system": "ttrpc", "rpc.service": service, "rpc.method": method}
        with self.tracer.start_as_current_span(f"{service}/{method}", kind=SpanKind.CLIENT, attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as span:
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier)
            try:
                response = await send(tuple(carrier.items()))
            except CtrpyError as error:
                span.set_attribute("rpc.grpc.status_code", int(error.code))
                span.set_status(Status(StatusCode.ERROR, error.code.name))
                raise
            except asyncio.CancelledError:
                span.set_status(Status(StatusCode.ERROR, "CANCELLED"))
                raise
            span.set_attribute("rpc.grpc.status_code", 0)
            steps = getattr(response, "steps", ())  # CreateResponse, StartResponse: ctrpy.shim.v1.Step
            if steps:
                self.record_shim_steps(span, shim_steps.from_proto(steps))
            return response

    def record_shim_steps(self, parent: Span, steps: Iterable[StepTuple]) -> None:
        """Turn the steps a shim returned in its answer into child spans of the shim call's
        span. The shim times them on the host's monotonic clock (which ctrpyd shares); spans
        want wall-clock time."""
        offset = time.time_ns() - time.monotonic_ns()
        context = trace.set_span_in_context(parent)
        for name, start, end in steps:
            child = self.tracer.start_span(name, context=context, start_time=start + offset,
                                           attributes={"ctrpy.component": "shim"})
            child.end(end_time=end + offset)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _status_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status the call ended with: OK, what the handler aborted with, or CANCELLED."""
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = getattr(context, "code", None)
    value = code() if callable(code) else None
    if isinstance(value, grpc.StatusCode):
        return value
    return grpc.StatusCode.UNKNOWN


class _ServerInterceptor(WrappingInterceptor):
    """A SERVER span per RPC (see the module docstring)."""

    def __init__(self, tracing: Tracing) -> None:
        super().__init__()
        self._tracing = tracing

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, handler.stream_unary), **kwargs)
        if handler.unary_stream:
            inner = cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)
            return grpc.unary_stream_rpc_method_handler(self._streaming(method, inner), **kwargs)
        inner = cast(Callable[..., AsyncIterator[Any]], handler.stream_stream)
        return grpc.stream_stream_rpc_method_handler(self._streaming(method, inner), **kwargs)

    def _unary(self, method: str, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        tracing = self._tracing

        async def handler(request: Any, context: Context) -> Any:
            call = tracing.start_rpc(method, request, context)
            token = otel_context.attach(trace.set_span_in_context(call.span))
            try:
                response = await inner(request, context)
            except BaseException as error:
                tracing.finish_rpc(call, request, context, error)
                raise
            finally:
                otel_context.detach(token)
            tracing.finish_rpc(call, request, context, None)
            return response

        return handler

    def _streaming(self, method: str, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        # The span is not made current: grpc may close a streaming handler from another
        # context (a client that goes away), where detaching it would fail.
        tracing = self._tracing

        async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
            call = tracing.start_rpc(method, request, context)
            error: BaseException | None = None
            try:
                responses = inner(request, context)
                if inspect.isawaitable(responses):
                    await responses
                    return
                async for item in responses:
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                tracing.finish_rpc(call, request, context, None if isinstance(error, GeneratorExit) else error)

        return handler

