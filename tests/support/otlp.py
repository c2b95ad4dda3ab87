"""An OTLP/gRPC trace collector on loopback, for a ctrpyd whose ``[tracing] endpoint`` points
at it: the tracing tests check the spans it received, the bench's tracing case only needs
something that accepts (and counts) the exports, as a real collector would.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent (or, with ``keep`` false,
    only counts them)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[Any] = []
        self.count = 0
        self.lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self.count += len(scope_spans.spans)
                    if self.keep:
                        self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def otlp_collector(keep: bool = True) -> Iterator[tuple[Collector, int]]:
    """Serve a :class:`Collector` on 127.0.0.1 (a free port); yield it and the port."""
    receiver = Collector(keep)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(None)
