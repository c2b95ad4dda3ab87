"""OpenTelemetry traces of ctrpyd (``[tracing]``): configuration, client sessions, the span tree
of one stock ``ctr run --rm`` as a collector receives it, and no OpenTelemetry in an idle daemon.

The daemon is the real one, exporting with its real OTLP/gRPC exporter to a collector the test
serves on loopback (a ``TraceService`` that keeps what it is sent): that checks the config, the
exporter and the flush at shutdown as well as the tree. The session logic is also checked
in-process, against the SDK's InMemorySpanExporter.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ctrpy.errors import InvalidArgument
from ctrpy.manager import config as configuration
from ctrpy.manager import tracing
from ctrpy.manager.config import TracingConfig
from ctrpy.manager.cri.cni import CNI
from ctrpy.manager.runtime import ShimLauncher
from ctrpy.manager.tracing.otel import Tracing
from ctrpy.manager.transfer.pull import Puller
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.ctrpyd import Daemon
from tests.support.otlp import Collector, otlp_collector

IMAGE = "docker.io/library/busybox:latest"
TASKS = "containerd.services.tasks.v1.Tasks"
SHIM = "ctrpy.shim.v1.TaskService"

# --- configuration ------------------------------------------------------------------------


def test_tracing_is_off_by_default_and_round_trips() -> None:
    assert configuration.Config().tracing == TracingConfig(endpoint="", sampling_ratio=1.0, service_name="ctrpyd")
    text = '[tracing]\nendpoint = "http://127.0.0.1:4317"\nsampling_ratio = 0.25\nservice_name = "node-a"\n'
    parsed = configuration.parse(text)
    assert parsed.tracing == TracingConfig("http://127.0.0.1:4317", 0.25, "node-a")
    assert configuration.parse(configuration.render(parsed)).tracing == parsed.tracing
    assert configuration.parse("[tracing]\nsampling_ratio = 1\n").tracing.sampling_ratio == 1.0


@pytest.mark.parametrize("body", [
    'endpoint = "127.0.0.1:4317"', 'endpoint = "ftp://collector:4317"', 'endpoint = "http://collector"',
    'endpoint = "http://:4317"', 'endpoint = "http://collector:99999"', "sampling_ratio = 1.5",
    "sampling_ratio = -0.1", 'sampling_ratio = "all"', 'service_name = ""', "service_name = 3", "protocol = 'grpc'",
])  # fmt: skip
def test_bad_tracing_settings_are_refused(body: str) -> None:
    with pytest.raises(InvalidArgument, match="tracing"):
        configuration.parse(f"[tracing]\n{body}\n")


# --- sessions, in-process -------------------------------------------------------------------


@dataclass
class _Call:
    """What a servicer context tells the interceptor: metadata and the status code."""

    metadata: tuple[tuple[str, str], ...]
    status: grpc.StatusCode = grpc.StatusCode.OK

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def code(self) -> grpc.StatusCode:
        return self.status


@dataclass
class _Request:
    id: str = ""
    key: str = ""
    container_id: str = ""
    container: Any = None


def _rpc(active: Tracing, method: str, request: _Request, lease: str = "",
         status: grpc.StatusCode = grpc.StatusCode.OK) -> None:
    metadata = (("containerd-namespace", "default"),) + ((("containerd-lease", lease),) if lease else ())
    context = _Call(metadata, status)
    call = active.start_rpc(method, request, context)  # type: ignore[arg-type]
    error = None if status is grpc.StatusCode.OK else grpc.aio.AbortError()
    active.finish_rpc(call, request, context, error)  # type: ignore[arg-type]


def test_the_calls_of_one_ctr_run_share_a_trace_under_a_session_root() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(endpoint="http://127.0.0.1:1"), exporter)
    try:
        images = "/containerd.services.images.v1.Images/Get"
        _rpc(tracing, images, _Request(id=IMAGE))  # before the lease: a trace of its own
        _rpc(tracing, "/containerd.services.leases.v1.Leases/Create", _Request(id="123-abc"))
        _rpc(tracing, "/containerd.services.snapshots.v1.Snapshots/Prepare", _Request(key="r1"), lease="123-abc")
        _rpc(tracing, "/containerd.services.containers.v1.Containers/Create",
             _Request(container=_Request(id="r1")), lease="123-abc")
        _rpc(tracing, "/containerd.services.leases.v1.Leases/Delete", _Request(id="123-abc"), lease="123-abc")
        assert len(tracing.sessions) == 1  # the container still holds it
        for method in ("Create", "Start", "Wait", "Delete"):
            _rpc(tracing, f"/{TASKS}/{method}", _Request(container_id="r1"))
        _rpc(tracing, "/containerd.services.snapshots.v1.Snapshots/Remove", _Request(key="r1"))
        _rpc(tracing, "/containerd.services.containers.v1.Containers/Delete", _Request(id="r1"))
        assert len(tracing.sessions) == 0
        _rpc(tracing, f"/{TASKS}/Get", _Request(container_id="r1"))  # after: on its own again
        tracing.provider.force_flush()
        spans = exporter.get_finished_spans()
        root = next(s for s in spans if s.name == "ctrpy.session")
        assert root.parent is None and root.attributes is not None
        assert root.attributes["containerd.lease"] == "123-abc" and root.attributes["containerd.container"] == "r1"
        grouped = [s for s in spans if s.context.trace_id == root.context.trace_id and s is not root]
        assert [s.name.rsplit(".", 1)[-1] for s in grouped] == [
            "Leases/Create", "Snapshots/Prepare", "Containers/Create", "Leases/Delete", "Tasks/Create",
            "Tasks/Start", "Tasks/Wait", "Tasks/Delete", "Snapshots/Remove", "Containers/Delete",
        ]
        assert all(s.parent is not None and s.parent.span_id == root.context.span_id for s in grouped)
        assert root.end_time is not None and all(s.end_time is not None and s.end_time <= root.end_time
                                                 for s in grouped)
        alone = [s for s in spans if s.name in (images.lstrip("/"), f"{TASKS}/Get")]
        assert len(alone) == 2 and all(s.parent is None for s in alone)
        assert len({s.context.trace_id for s in alone} | {root.context.trace_id}) == 3
    finally:
        tracing.shutdown()


def test_a_client_traceparent_wins_and_sessions_are_bounded() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(TracingConfig(endpoint="http://127.0.0.1:1"), exporter)
    try:
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        context = _Call((("traceparent", f"00-{trace_id}-{parent_id}-01"),))
        request = _Request(container_id="x")
        call = tracing.start_rpc(f"/{TASKS}/Start", request, context)  # type: ignore[arg-type]
        tracing.finish_rpc(call, request, context, None)  # type: ignore[arg-type]
        for n in range(tracing.sessions._limit + 5):
            _rpc(tracing, "/containerd.services.leases.v1.Leases/Create", _Request(id=f"lease-{n}"))
        assert len(tracing.sessions) == tracing.sessions._limit
        tracing.provider.force_flush()
        started = next(s for s in exporter.get_finished_spans() if s.name == f"{TASKS}/Start")
        assert f"{started.context.trace_id:032x}" == trace_id
        assert started.parent is not None and f"{started.parent.span_id:016x}" == parent_id
        assert sum(s.name == "ctrpy.session" for s in exporter.get_finished_spans()) == 5  # the oldest ended
    finally:
        tracing.shutdown()


def test_failed_creates_leave_no_session_and_keep_the_existing_one() -> None:
    tracing = Tracing(TracingConfig(endpoint="http://127.0.0.1:1"), InMemorySpanExporter())
    try:
        containers = "/containerd.services.containers.v1.Containers/Create"
        _rpc(tracing, containers, _Request(container=_Request(id="c1")))
        assert len(tracing.sessions) == 1
        _rpc(tracing, containers, _Request(container=_Request(id="c1")), status=grpc.StatusCode.ALREADY_EXISTS)
        _rpc(tracing, containers, _Request(container=_Request(id="c2")), status=grpc.StatusCode.INVALID_ARGUMENT)
        _rpc(tracing, "/containerd.services.leases.v1.Leases/Create", _Request(id="l1"),
             status=grpc.StatusCode.ALREADY_EXISTS)
        assert len(tracing.sessions) == 1  # c1's, still bound
        _rpc(tracing, "/containerd.services.leases.v1.Leases/Create", _Request(id="l2"))
        _rpc(tracing, "/containerd.services.leases.v1.Leases/Create", _Request(id="l2"),
             status=grpc.StatusCode.ALREADY_EXISTS)
        assert len(tracing.sessions) == 2  # l2's first one stays
        _rpc(tracing, "/containerd.services.leases.v1.Leases/Delete", _Request(id="l2"))
        _rpc(tracing, "/containerd.services.containers.v1.Containers/Delete", _Request(id="c1"))
        assert len(tracing.sessions) == 0
    finally:
        tracing.shutdown()


# --- a real ctrpyd and a collector on loopback ------------------------------------------------


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    with otlp_collector() as served:
        yield served


def _attributes(span: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


def test_one_ctr_run_is_one_trace_with_rpc_shim_and_runc_spans(collector: tuple[Collector, int]) -> None:
    receiver, port = collector
    daemon = Daemon()
    try:
        config = daemon.base / "ctrpyd.toml"
        config.write_text(f'[tracing]\nendpoint = "http://127.0.0.1:{port}"\nservice_name = "ctrpyd-test"\n')
        daemon.extra_args = ("--config", str(config))
        daemon.start()
        archive = daemon.base / "busybox.tar"
        write_oci_layout_tar(busybox_image(), archive)
        assert daemon.ctr("images", "import", str(archive)).returncode == 0
        run = daemon.ctr("run", "--rm", IMAGE, "traced1", "echo", "hi")
        assert run.returncode == 0 and run.stdout == "hi\n", run.stderr
        assert daemon.stop() == 0  # the exporter flushes what it holds as ctrpyd stops
    finally:
        daemon.cleanup()
    with receiver.lock:
        spans = list(receiver.spans)
    by_id = {span.span_id: span for span in spans}

    def one(name: str, parent: Any, **attributes: Any) -> Any:
        found = [s for s in spans if s.name == name and s.parent_span_id == parent.span_id
                 and all(_attributes(s).get(k) == v for k, v in attributes.items())]
        assert len(found) == 1, (name, [s.name for s in spans if s.parent_span_id == parent.span_id])
        return found[0]

    create = next(s for s in spans if s.name == f"{TASKS}/Create" and _attributes(s).get("containerd.container") == "traced1")
    root = by_id[create.parent_span_id]
    assert root.name == "ctrpy.session" and not root.parent_span_id
    assert _attributes(root)["containerd.container"] == "traced1"
    trace = [s for s in spans if s.trace_id == root.trace_id]
    rpcs = {s.name for s in trace if s.parent_span_id == root.span_id}
    assert {"containerd.services.leases.v1.Leases/Create", "containerd.services.containers.v1.Containers/Create",
            f"{TASKS}/Create", f"{TASKS}/Start", f"{TASKS}/Wait", f"{TASKS}/Delete",
            "containerd.services.containers.v1.Containers/Delete",
            "containerd.services.events.ttrpc.v1.Events/Forward"} <= rpcs, rpcs  # the shim's task events
    start = one(f"{TASKS}/Start", root)
    shim_create = one(f"{SHIM}/Create", create)
    shim_start = one(f"{SHIM}/Start", start)
    runc_create = one("runc create", shim_create)
    runc_start = one("runc start", shim_start)
    one("metadata ContainerStore.get", create)
    one("shim start", create)
    assert _attributes(create)["rpc.grpc.status_code"] == 0
    # In order, each inside its parent (the shim's clock is the host's: same machine).
    assert create.start_time_unix_nano <= shim_create.start_time_unix_nano <= runc_create.start_time_unix_nano
    assert runc_create.end_time_unix_nano <= shim_create.end_time_unix_nano <= create.end_time_unix_nano
    assert create.end_time_unix_nano <= start.start_time_unix_nano
    assert shim_start.start_time_unix_nano <= runc_start.start_time_unix_nano <= runc_start.end_time_unix_nano
    assert runc_start.end_time_unix_nano <= shim_start.end_time_unix_nano <= start.end_time_unix_nano
    assert root.end_time_unix_nano >= max(s.end_time_unix_nano for s in trace if s is not root)


class _ImportLoggingDaemon(Daemon):
    """A ctrpyd whose interpreter logs every import it makes, whenever it makes it."""

    def command(self) -> list[str]:
        argv = super().command()
        return [argv[0], "-X", "importtime", *argv[1:]]


def test_an_idle_daemon_without_tracing_imports_no_opentelemetry() -> None:
    daemon = _ImportLoggingDaemon()
    try:
        daemon.start()
        for args in (("version",), ("containers", "ls"), ("tasks", "ls"), ("plugins", "ls")):
            assert daemon.ctr(*args).returncode == 0
        assert daemon.stop() == 0
        log = daemon.log()
    finally:
        daemon.cleanup()
    imported = re.findall(r"^import time:.*\|\s*(\S+)$", log, re.MULTILINE)
    assert "grpc" in imported and "ctrpy.manager.tracing" in imported  # the log is the real one
    assert [name for name in imported if name.startswith("opentelemetry")] == []


def test_the_tracing_module_loads_opentelemetry_only_in_setup() -> None:
    code = (
        "import sys\n"
        "from ctrpy.manager import tracing\n"
        "from ctrpy.manager.config import TracingConfig\n"
        "assert tracing.setup(TracingConfig()) is None and not tracing.enabled()\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert tracing.setup(TracingConfig(endpoint='http://127.0.0.1:1')) is not None\n"
        "assert 'opentelemetry.sdk.trace' in sys.modules and tracing.enabled()\n"
        "tracing.shutdown()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr


def test_inner_spans_are_made_only_inside_a_traced_call(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    active = Tracing(TracingConfig(endpoint="http://127.0.0.1:1"), exporter)
    monkeypatch.setattr(tracing, "_active", active)

    @tracing.traced("step")
    async def step() -> int:
        with tracing.span("inner", n=1):
            return 7

    async def calls() -> None:
        assert await step() == 7  # no current span: nothing recorded (a GC pass, say)
        with active.tracer.start_as_current_span("rpc"):
            assert await step() == 7

    try:
        asyncio.run(calls())
        active.provider.force_flush()
        spans = {span.name: span for span in exporter.get_finished_spans()}
        assert sorted(spans) == ["inner", "rpc", "step"]
        assert spans["step"].parent is not None and spans["step"].parent.span_id == spans["rpc"].context.span_id
        assert spans["inner"].parent is not None and spans["inner"].parent.span_id == spans["step"].context.span_id
    finally:
        active.shutdown()
    # Where the traced steps are (CNI ADD/DEL: tests/cri_net/test_cni_tracing.py runs them).
    for method in (CNI._add, CNI._delete, Puller.pull_all, ShimLauncher.start_shim):
        assert hasattr(method, "__wrapped__"), method
