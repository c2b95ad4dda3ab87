"""OpenTelemetry traces of ctrpyd, off by default (``[tracing] endpoint``).

This module is what the rest of ctrpyd calls, and it imports nothing of OpenTelemetry: an idle
daemon without tracing must not carry the SDK (several MiB of modules). :func:`setup` imports
:mod:`.otel` only when an endpoint is configured; until then :func:`span` hands back one shared
no-op context manager and :func:`traced` calls straight through, so the cost of a disabled span
is a global read.

What is traced (see README, "Traces"): a span per RPC (the server interceptor in :mod:`.otel`;
for the shims' events on the ttrpc socket, :func:`ttrpc_call`), and inside it the metadata store
calls, the calls to shims (:func:`shim_call`; their own steps, the rootfs mount, ``runc create``,
``runc start``, come back in the answer's ``steps``), the shim start, CNI ADD/DEL and image pulls.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    import grpc

    from ctrpy.manager.config import TracingConfig

    from .otel import Tracing

P = ParamSpec("P")
T = TypeVar("T")

#: The running tracing, or None when it is off (the default).
_active: Tracing | None = None
_NOTHING = contextlib.nullcontext()


def enabled() -> bool:
    """Whether spans are being made."""
    return _active is not None


def setup(config: TracingConfig) -> Tracing | None:
    """Start tracing when ``config`` names an endpoint; returns it (its ``shutdown`` flushes the
    spans not yet sent), else None without importing OpenTelemetry."""
    global _active
    if not config.endpoint:
        return None
    from .otel import Tracing  # the only place OpenTelemetry gets imported

    _active = Tracing(config)
    return _active


def shutdown() -> None:
    """End open sessions, send what is buffered and stop making spans."""
    global _active
    tracing, _active = _active, None
    if tracing is not None:
        tracing.shutdown()


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """The interceptor that makes a span per RPC, when tracing is on (else none)."""
    return [] if _active is None else [_active.server_interceptor()]


async def shim_call(service: str, method: str, send: Callable[[Sequence[tuple[str, str]]], Awaitable[T]]) -> T:
    """Make one ttrpc call to a shim, ``send(metadata)``, as a CLIENT span with the W3C
    ``traceparent`` in ``metadata`` and the shim's steps of the answer (its ``steps``, if it has
    them) as child spans. Callers check :func:`enabled` first, so that with tracing off a shim
    call costs one ``if``; outside a traced call it is sent as it is."""
    if _active is None:
        return await send(())
    return await _active.shim_call(service, method, send)


def ttrpc_call(service: str, method: str, namespace: str, request: object,
               metadata: Mapping[str, Sequence[str]]) -> contextlib.AbstractContextManager[Any]:
    """The SERVER span of one call on ctrpyd's ttrpc socket (a shim's event), around its
    handler: named and grouped into client sessions like a gRPC call (a no-op when off)."""
    if _active is None:
        return _NOTHING
    return _active.ttrpc_call(service, method, namespace, request, metadata)


def span(name: str, **attributes: str | int | float | bool) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one around a block (a no-op when tracing is off)."""
    if _active is None:
        return _NOTHING
    return _active.span(name, attributes)


def traced(name: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate a coroutine function so that each call is a span named ``name`` (a child of
    the current one; when tracing is off, one more frame and nothing else)."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            if _active is None:
                return await fn(*args, **kwargs)
            with _active.span(name, {}):
                return await fn(*args, **kwargs)

        return wrapper

    return decorate
