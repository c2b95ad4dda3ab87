"""containerd.services.events.ttrpc.v1.Events on ctrpyd's ttrpc socket: the shims' task events.

Shims speak ttrpc, not gRPC (a gRPC channel in every shim costs memory and start-up time), so
they send their events (create, start, exec, OOM, exit) to ctrpyd's ttrpc socket, as
containerd's shims send them to containerd's: ``Events/Forward``, an envelope the shim built
with the namespace of its task and the time the event happened. The envelope is checked as the
gRPC Events.Forward checks it (:func:`.events.forwarded`) and handed to the exchange, where the
task manager and every ``Events.Subscribe`` subscriber (``ctr events``) see it.

Errors leave as ttrpc status codes: a bad envelope is INVALID_ARGUMENT.
"""

from __future__ import annotations

from google.protobuf import empty_pb2

from ctrpy import ttrpc
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2 as api
from ctrpy.manager import tracing
from ctrpy.manager.events import Exchange

from .events import forwarded

SERVICE = "containerd.services.events.ttrpc.v1.Events"


class TtrpcEventsService:
    """The ttrpc Events service: Forward into ``events``."""

    def __init__(self, events: Exchange) -> None:
        self.events = events

    def methods(self) -> dict[str, ttrpc.Method]:
        """What :meth:`ctrpy.ttrpc.Server.register` takes for :data:`SERVICE`."""
        return {"Forward": ttrpc.Method(api.ForwardRequest, self.forward)}

    async def forward(self, request: api.ForwardRequest, context: ttrpc.Context) -> empty_pb2.Empty:
        """Check the envelope and deliver it; InvalidArgument for a bad one."""
        with tracing.ttrpc_call(SERVICE, "Forward", request.envelope.namespace, request, context.metadata):
            self.events.forward(forwarded(request.envelope))
        return empty_pb2.Empty()
