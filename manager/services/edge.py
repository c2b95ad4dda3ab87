"""The servicer edge: what every call goes through on its way in and out.

One interceptor wraps every method handler so that, for the duration of the call:

- the ``containerd-namespace`` header (default ``default``) is validated and set as the current
  namespace, and the ``containerd-lease`` header as the current lease; a CRI call
  (``/runtime.v1.*``) always works in ``k8s.io``, as containerd's CRI plugin does, whatever
  header it carries;
- both are bound into structlog's context, so log lines carry them;
- a :class:`ctrpy.errors.CtrpyError` raised inside becomes its gRPC status code and message
  (Python's ``NotImplementedError``, which generated servicers raise for a method they lack,
  becomes UNIMPLEMENTED; a full disk that no store turned into ResourceExhausted becomes
  RESOURCE_EXHAUSTED all the same); anything else is logged with its traceback and answered
  with UNKNOWN;
- a request body that does not decode as the method's message is answered with
  INVALID_ARGUMENT (grpc would answer UNKNOWN, naming a Python exception).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog

from ctrpy import diskspace, errors, identifiers, namespaces
from ctrpy.errors import CtrpyError, InvalidArgument

log = structlog.get_logger(__name__)

# grpc's stubs make these generic; the runtime classes are not subscriptable.
if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Context = grpc.aio.ServicerContext
    Handler = grpc.RpcMethodHandler


#: The namespace of everything the CRI makes or sees; its methods start with CRI_PREFIX.
CRI_NAMESPACE = "k8s.io"
CRI_PREFIX = "/runtime.v1."


def _enter_call(context: Context, method: str = "") -> None:
    """Set the call's namespace and lease, and bind them for logging.

    Nothing is reset afterwards: grpc.aio runs every call in its own task, whose context is a
    copy that dies with it. (Resetting from a streaming handler would even fail: grpc may close
    the generator from another context when the client cancels.)
    """
    metadata = {key: value for key, value in (context.invocation_metadata() or ())}
    namespace = str(metadata.get(namespaces.NAMESPACE_HEADER) or namespaces.DEFAULT)
    if method.startswith(CRI_PREFIX):
        namespace = CRI_NAMESPACE
    lease = metadata.get(namespaces.LEASE_HEADER)
    identifiers.validate(namespace)
    namespaces.current.set(namespace)
    namespaces.current_lease.set(str(lease) if lease else None)
    structlog.contextvars.bind_contextvars(ns=namespace, **({"lease": lease} if lease else {}))


# grpc clients refuse a status whose headers pass 8 KiB (the message travels percent-encoded):
# a message echoing a 10,000-character identifier is cut in the middle to fit.
_MESSAGE_HEAD, _MESSAGE_TAIL = 2048, 256


def _encoded_size(text: str) -> int:
    data = text.encode("utf-8", "surrogatepass")
    return sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in data)


def bounded(message: str) -> str:
    """``message``, cut in the middle (keeping the kind at its end) if its encoded form would
    pass the budget of a status header."""
    if _encoded_size(message) <= _MESSAGE_HEAD + _MESSAGE_TAIL:
        return message

    def fitting(chars: str, budget: int) -> int:
        count = size = 0
        for ch in chars:
            size += _encoded_size(ch)
            if size > budget:
                break
            count += 1
        return count

    head = message[: fitting(message, _MESSAGE_HEAD)]
    tail = message[len(message) - fitting(message[::-1], _MESSAGE_TAIL) :]
    return f"{head}...[{len(message) - len(head) - len(tail)} characters cut]...{tail}"


async def _abort(context: Context, error: BaseException, method: str) -> None:
    if isinstance(error, NotImplementedError):
        error = errors.NotImplemented(str(error))
    if diskspace.is_out_of_space(error):
        # A full disk the stores did not guard still answers RESOURCE_EXHAUSTED, not UNKNOWN.
        filename = getattr(error, "filename", None)
        error = diskspace.exhausted(error, f"serving {method}", filename if isinstance(filename, str) else "/")
    if isinstance(error, CtrpyError):
        log.debug("call failed", method=method, code=error.code.name, error=error.message)
        code = errors.to_grpc_code(error)
        context.set_code(code)  # abort() leaves code() at OK; the metrics interceptor reads it
        await context.abort(code, bounded(error.message))
    log.exception("call crashed", method=method, exc_info=error)
    context.set_code(grpc.StatusCode.UNKNOWN)
    await context.abort(grpc.StatusCode.UNKNOWN, bounded(f"{type(error).__name__}: {error}"))


class _Undecodable:
    """Stands in for a request whose bytes did not decode; the handler refuses it."""

    def __init__(self, message_type: str, error: Exception) -> None:
        self.message_type, self.error = message_type, error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning an :class:`_Undecodable` instead of raising."""
    if deserializer is None:
        return None
    owner = getattr(deserializer, "__self__", None)
    message_type = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "the request message")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, or whatever else bad bytes provoke
            return _Undecodable(message_type, error)

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidArgument(f"request is not a valid {request.message_type}: {request.error}")
    return request


async def _decoded_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _decoded(request)


def _wrap_unary(
    method: str, inner: Callable[..., Awaitable[Any]], streaming_request: bool = False
) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: Context) -> Any:
        try:
            _enter_call(context, method)
            request = _decoded_stream(request) if streaming_request else _decoded(request)
            return await inner(request, context)
        except (grpc.aio.AbortError, AssertionError):
            raise
        except Exception as error:
            await _abort(context, error, method)

    return handler


def _wrap_streaming(
    method: str, inner: Callable[..., AsyncIterator[Any]], streaming_request: bool = False
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            _enter_call(context, method)
            request = _decoded_stream(request) if streaming_request else _decoded(request)
            responses = inner(request, context)
            if inspect.isawaitable(responses):
                # A handler that writes with context.write (grpc's health Watch) is a coroutine.
                await responses
                return
            async for item in responses:
                yield item
        except (grpc.aio.AbortError, AssertionError):
            raise
        except Exception as error:
            await _abort(context, error, method)

    return handler


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps each method's handler (:meth:`_wrap`), once per method: grpc
    hands out the same handler for a method every time, so it is not wrapped on every call.
    The edge, the metrics and the tracing interceptors are all of this kind."""

    def __init__(self) -> None:
        # method -> (grpc's handler, ours wrapping it)
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        raise NotImplementedError


class EdgeInterceptor(WrappingInterceptor):
    """Namespace, lease, logging context and error translation for every call."""

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kwargs = {
            "request_deserializer": _tolerant(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(method, handler.unary_unary), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(method, handler.stream_unary, streaming_request=True), **kwargs
            )
        if handler.unary_stream:
            # grpc.aio handlers are async generators, though the stubs type them as iterators.
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming(method, cast(Callable[..., AsyncIterator[Any]], handler.unary_stream)), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_streaming(
                method, cast(Callable[..., AsyncIterator[Any]], handler.stream_stream), streaming_request=True
            ),
            **kwargs,
        )
