"""The servicer edge: what every call goes through on its way in and out.

One interceptor wraps every method handler so that, for the duration of the call:

- the ``containerd-namespace`` header (default ``default``) is validated and set as the current
  namespace, and the ``containerd-lease`` header as the current lease;
- both are bound into structlog's context, so log lines carry them;
- a :class:`ctrpy.errors.CtrpyError` raised inside becomes its gRPC status code and message;
  anything else is logged with its traceback and answered with UNKNOWN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog

from ctrpy import identifiers, namespaces
from ctrpy.errors import CtrpyError

log = structlog.get_logger(__name__)

# grpc's stubs make these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler


def _enter_call(context: Context) -> None:
    """Set the call's namespace and lease, and bind them for logging.

    Nothing is reset afterwards: grpc.aio runs every call in its own task, whose context is a
    copy that dies with it. (Resetting from a streaming handler would even fail: grpc may close
    the generator from another context when the client cancels.)
    """
    metadata = {key: value for key, value in (context.invocation_metadata() or ())}
    namespace = str(metadata.get(namespaces.NAMESPACE_HEADER) or namespaces.DEFAULT)
    lease = metadata.get(namespaces.LEASE_HEADER)
    identifiers.validate(namespace)
    namespaces.current.set(namespace)
    namespaces.current_lease.set(str(lease) if lease else None)
    structlog.contextvars.bind_contextvars(ns=namespace, **({"lease": lease} if lease else {}))


async def _abort(context: Context, error: BaseException, method: str) -> None:
    if isinstance(error, CtrpyError):
        log.debug("call failed", method=method, code=error.code.name, error=error.message)
        await context.abort(error.code, error.message)
    log.exception("call crashed", method=method, exc_info=error)
    await context.abort(grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}")


def _wrap_unary(method: str, inner: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        try:
            _enter_call(context)
            return await inner(request, context)
        except (grpc.aio.AbortError, AssertionError):
            raise
        except Exception as error:
            await _abort(context, error, method)

    return handler


def _wrap_streaming(method: str, inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            _enter_call(context)
            async for item in inner(request, context):
                yield item
        except (grpc.aio.AbortError, AssertionError):
            raise
        except Exception as error:
            await _abort(context, error, method)

    return handler


class EdgeInterceptor(grpc.aio.ServerInterceptor):
    """Namespace, lease, logging context and error translation for every call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(method, handler.unary_unary), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(method, handler.stream_unary), **kwargs)
        if handler.unary_stream:
            # grpc.aio handlers are async generators, though the stubs type them as iterators.
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming(method, cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_streaming(method, cast(Callable[..., AsyncIterator[Any]], handler.stream_stream)), **kwargs
        )
