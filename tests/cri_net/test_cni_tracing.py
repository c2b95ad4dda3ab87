"""With ``[tracing]`` on, each CNI ADD and DEL of a pod (one per network: loopback, then the
pod network) is a span under the call that asked for it; with the real plugins."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ctrpy.manager import tracing
from ctrpy.manager.config import TracingConfig
from ctrpy.manager.cri.cni import PodRequest
from ctrpy.manager.tracing.otel import Tracing
from tests.cri_net.conftest import Net, requires_plugins

pytestmark = requires_plugins


def test_cni_add_and_del_are_spans_of_the_call(testnet: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemorySpanExporter()
    active = Tracing(TracingConfig(endpoint="http://127.0.0.1:1"), exporter)
    monkeypatch.setattr(tracing, "_active", active)
    testnet.write_conflist(portmap=False)
    cni = testnet.cni()
    pod = PodRequest("sbtrace0123456789", testnet.new_netns(), pod_namespace="default", pod_name="web",
                     pod_uid="uid-1")

    async def run_and_stop() -> None:
        with active.tracer.start_as_current_span("RunPodSandbox"):
            await cni.setup(pod)
        with active.tracer.start_as_current_span("StopPodSandbox"):
            await cni.teardown(pod)

    try:
        asyncio.run(run_and_stop())
        active.provider.force_flush()
        spans = exporter.get_finished_spans()
    finally:
        active.shutdown()
    calls = {span.name: span for span in spans if span.name.endswith("PodSandbox")}
    children = {name: [s.name for s in spans if s.parent is not None and s.parent.span_id == call.context.span_id]
                for name, call in calls.items()}
    assert children == {"RunPodSandbox": ["cni ADD", "cni ADD"], "StopPodSandbox": ["cni DEL", "cni DEL"]}
    assert testnet.allocated() == []
