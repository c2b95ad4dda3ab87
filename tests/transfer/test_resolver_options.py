"""RegistryResolver fields of a transfer: ``headers`` on every registry request, and
``http_debug`` with its ``logs_stream`` (HTTP dumps sent as containerd's Data messages within the
window the reader grants, the stream closed when the transfer ends)."""

from __future__ import annotations

import time

from google.protobuf.message import Message

from ctrpy.api.containerd.types.transfer import imagestore_pb2, registry_pb2
from ctrpy.images import store, transfer
from ctrpy.images.transfer import PullOptions
from tests.support.ctrpyd import Daemon
from tests.support.registry import forward, scripted

from .conftest import Filled
from .support import LogsReader, pull_with


def test_headers_reach_every_registry_request(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    with scripted(lambda request: forward(filled.port, request)) as front:
        ref = f"{front.host}/library/busybox:1"

        def resolver(message: registry_pb2.RegistryResolver) -> None:
            message.headers["X-Ctrpy-Test"] = "h2-value"
            message.headers["X-Second"] = "two"

        with ctrpyd.client(namespace) as client:
            pull_with(client, ref, imagestore_pb2.ImageStore(name="with-headers"), resolver=resolver)
            assert store.get(client, "with-headers").target.digest == filled.busybox.manifest_digest
        kinds = {request.path.split("/")[-2] for request in front.requests}
        assert {"manifests", "blobs"} <= kinds
        assert front.requests and all(request.headers.get("x-ctrpy-test") == "h2-value"
                                      and request.headers.get("x-second") == "two" for request in front.requests)


def test_http_debug_dumps_to_the_logs_stream(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    with ctrpyd.client(namespace) as client:
        logs = LogsReader(client)

        def resolver(message: registry_pb2.RegistryResolver) -> None:
            message.http_debug = registry_pb2.DEBUG
            message.logs_stream = logs.stream.id

        pull_with(client, ref, imagestore_pb2.ImageStore(name="debugged"), resolver=resolver)
        text = logs.finish()
    assert logs.ended_by_server()
    assert "/v2/library/busybox/manifests/1 HTTP/1.1\r\n" in text
    assert f"Host: {filled.host}\r\n" in text
    assert "HTTP/1.1 200 OK\r\n" in text
    for layer in filled.busybox.layers:
        assert f"GET /v2/library/busybox/blobs/{layer.digest} HTTP/1.1" in text


def test_a_logs_stream_nobody_reads_does_not_hold_the_pull(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """containerd's writer blocks the transfer until the reader grants a window; ctrpyd keeps
    the dumps in memory instead (bounded), so the pull completes and the stream is closed."""
    ref = f"{filled.host}/library/busybox:1"
    with ctrpyd.client(namespace) as client:
        logs = LogsReader(client, grant=False)

        def resolver(message: registry_pb2.RegistryResolver) -> None:
            message.http_debug = registry_pb2.BOTH
            message.logs_stream = logs.stream.id

        started = time.monotonic()
        pull_with(client, ref, imagestore_pb2.ImageStore(name="unread"), resolver=resolver)
        assert time.monotonic() - started < 60  # liveness only: the pull does not wait for a reader
        logs.finish()
        assert logs.ended_by_server()
        assert logs.data == b""  # no window, no bytes
        assert store.get(client, "unread").target.digest == filled.busybox.manifest_digest


def test_http_trace_goes_to_the_daemon_log(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    with ctrpyd.client(namespace) as client:
        pull_with(client, ref, imagestore_pb2.ImageStore(name="traced"),
                  resolver=lambda message: setattr(message, "http_debug", registry_pb2.TRACE))
    assert "registry http trace" in ctrpyd.log()


def test_http_debug_without_a_stream_goes_to_the_daemon_log(ctrpyd: Daemon, namespace: str,
                                                           filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    with ctrpyd.client(namespace) as client:
        pull_with(client, ref, imagestore_pb2.ImageStore(name="logged"),
                  resolver=lambda message: setattr(message, "http_debug", registry_pb2.DEBUG))
    assert "/v2/library/busybox/manifests/1 HTTP/1.1" in ctrpyd.log()


def test_headers_reach_every_push_request(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    with ctrpyd.client(namespace) as client:
        pull_with(client, f"{filled.host}/library/busybox:1", imagestore_pb2.ImageStore(name="to-push"))
        with scripted(lambda request: forward(filled.port, request)) as front:
            def pair(registry: registry_pb2.OCIRegistry) -> tuple[Message, Message]:
                registry.resolver.headers["X-Push-Test"] = "pushed"
                return imagestore_pb2.ImageStore(name="to-push"), registry

            transfer._run(client, f"{front.host}/library/pushed:{namespace}", PullOptions(plain_http=True), None,
                          pair)
            methods = {request.method for request in front.requests}
            assert "PUT" in methods
            assert all(request.headers.get("x-push-test") == "pushed" for request in front.requests)
