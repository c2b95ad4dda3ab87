"""gRPC server reflection (``grpc.reflection.v1alpha.ServerReflection``), built at its first call.

``grpc_reflection``'s servicer imports protobuf's ``descriptor_pb2`` (the descriptor protos
themselves, a large module) and grpc's experimental API: about 0.35 MiB resident in a daemon
that, most of the time, nobody asks to list its services (``grpcurl`` and ``grpc_cli`` do). So
the composition root registers :class:`LazyReflection`, a generic handler that knows the one
method's name and kind, and imports and builds grpc's own servicer when that method is first
called. What it answers is unchanged: the services in the list, from the default descriptor pool.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

# grpc_reflection.v1alpha.reflection.SERVICE_NAME (tests check the two agree).
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
_METHOD = f"/{REFLECTION_SERVICE}/ServerReflectionInfo"


class LazyReflection(grpc.GenericRpcHandler):
    """Serves reflection for ``service_names`` (reflection itself included by the caller)."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._names = tuple(service_names)
        self._handler: grpc.RpcMethodHandler[Any, Any] | None = None

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        if handler_call_details.method != _METHOD:
            return None
        if self._handler is None:
            self._handler = _build(self._names)
        return self._handler


def _build(service_names: tuple[str, ...]) -> grpc.RpcMethodHandler[Any, Any]:
    """grpc's asyncio reflection servicer, behind the handler its generated code would register."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2

    servicer = reflection.aio.ReflectionServicer(service_names)
    return grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
