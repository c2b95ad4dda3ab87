"""Tracing of ctrpyd's ttrpc traffic, in-process: the CLIENT span of a call to a shim (the
``traceparent`` it sends, the shim's steps it records, its status), and the SERVER span of a
shim's event on ctrpyd's ttrpc socket. The whole tree of a real ``ctr run`` is checked in
tests/test_tracing.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ctrpy.api.containerd.events import task_pb2
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_events
from ctrpy.api.ctrpy.shim.v1 import shim_pb2 as pb
from ctrpy.errors import NotFound
from ctrpy.manager import tracing
from ctrpy.manager.config import TracingConfig
from ctrpy.manager.tracing.otel import Tracing

SHIM = "ctrpy.shim.v1.TaskService"


@pytest.fixture
def active(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Tracing, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    on = Tracing(TracingConfig(endpoint="http://127.0.0.1:1"), exporter)
    monkeypatch.setattr(tracing, "_active", on)
    try:
        yield on, exporter
    finally:
        on.shutdown()


def test_a_shim_call_is_a_client_span_with_traceparent_and_the_shims_steps(
        active: tuple[Tracing, InMemorySpanExporter]) -> None:
    on, exporter = active
    sent: list[Sequence[tuple[str, str]]] = []
    answer = pb.CreateResponse(pid=7, steps=[pb.Step(name="runc create", start_ns=100, end_ns=250)])

    async def send(metadata: Sequence[tuple[str, str]]) -> pb.CreateResponse:
        sent.append(metadata)
        return answer

    async def fail(metadata: Sequence[tuple[str, str]]) -> pb.CreateResponse:
        raise NotFound("task c1")

    async def calls() -> None:
        assert await tracing.shim_call(SHIM, "Create", send) is answer  # outside a traced call
        with on.tracer.start_as_current_span("rpc"):
            assert await tracing.shim_call(SHIM, "Create", send) is answer
            with pytest.raises(NotFound):
                await tracing.shim_call(SHIM, "Delete", fail)

    asyncio.run(calls())
    on.provider.force_flush()
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert sorted(spans) == ["ctrpy.shim.v1.TaskService/Create", "ctrpy.shim.v1.TaskService/Delete", "rpc",
                             "runc create"]
    create, delete, step = spans[f"{SHIM}/Create"], spans[f"{SHIM}/Delete"], spans["runc create"]
    assert sent[0] == ()  # untraced: nothing added
    [(key, value)] = sent[1]
    assert key == "traceparent" and value.split("-")[1:3] == [f"{create.context.trace_id:032x}",
                                                               f"{create.context.span_id:016x}"]
    assert create.attributes is not None and create.attributes["rpc.system"] == "ttrpc"
    assert create.attributes["rpc.grpc.status_code"] == 0
    assert delete.attributes is not None and delete.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND
    assert not delete.status.is_ok
    assert step.parent is not None and step.parent.span_id == create.context.span_id
    assert step.end_time is not None and step.start_time is not None and step.end_time - step.start_time == 150


def test_a_forwarded_task_event_joins_its_containers_session(active: tuple[Tracing, InMemorySpanExporter]) -> None:
    on, exporter = active
    created = on.start_rpc("/containerd.services.containers.v1.Containers/Create",
                           _Created("c1"), _Metadata())  # type: ignore[arg-type]
    on.finish_rpc(created, _Created("c1"), _Metadata(), None)  # type: ignore[arg-type]
    event = task_pb2.TaskExit(container_id="c1")
    request = ttrpc_events.ForwardRequest(envelope=ttrpc_events.Envelope(namespace="default", topic="/tasks/exit"))
    request.envelope.event.type_url, request.envelope.event.value = "containerd.events.TaskExit", event.SerializeToString()
    with tracing.ttrpc_call("containerd.services.events.ttrpc.v1.Events", "Forward", "default", request, {}):
        pass
    with pytest.raises(NotFound), tracing.ttrpc_call("containerd.services.events.ttrpc.v1.Events", "Forward",
                                                     "other", request, {}):
        raise NotFound("x")
    on.provider.force_flush()
    spans = exporter.get_finished_spans()
    forwards = [s for s in spans if s.name == "containerd.services.events.ttrpc.v1.Events/Forward"]
    create = next(s for s in spans if s.name.endswith("Containers/Create"))
    assert len(forwards) == 2
    assert forwards[0].parent is not None and create.parent is not None
    assert forwards[0].parent.span_id == create.parent.span_id  # the session's root
    assert forwards[0].attributes is not None and forwards[0].attributes["rpc.system"] == "ttrpc"
    assert forwards[0].attributes["containerd.container"] == "c1"
    assert forwards[1].parent is None  # another namespace: no session
    assert forwards[1].attributes is not None and forwards[1].attributes["rpc.grpc.status_code"] == 5


class _Metadata:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("containerd-namespace", "default"),)


class _Container:
    def __init__(self, ident: str) -> None:
        self.id = ident


class _Created:
    def __init__(self, ident: str) -> None:
        self.container = _Container(ident)
