"""containerd.services.events.v1.Events: publish into and subscribe to the exchange.

Forward's check of an envelope a client built itself (:func:`forwarded`) is shared with the
shims' Forward on ctrpyd's ttrpc socket (:mod:`.ttrpc_events`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

from google.protobuf import empty_pb2

from ctrpy import identifiers, namespaces
from ctrpy.api.containerd.services.events.v1 import events_pb2 as api
from ctrpy.api.containerd.services.events.v1 import events_pb2_grpc as api_grpc
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2 as ttrpc_api
from ctrpy.errors import InvalidArgument
from ctrpy.manager.events import Envelope, Exchange, validate_topic

from . import convert


def forwarded(incoming: api.Envelope | ttrpc_api.Envelope) -> Envelope:
    """The envelope of a Forward, checked (an event, a valid namespace and topic, a timestamp in
    range); its own timestamp is kept, now when it has none. Raises InvalidArgument."""
    if not incoming.HasField("event"):
        raise InvalidArgument("event must not be empty")
    return Envelope(
        timestamp=convert.timestamp_to_datetime(incoming.timestamp) or datetime.now(UTC),
        namespace=identifiers.validate(incoming.namespace),
        topic=validate_topic(incoming.topic),
        event=convert.any_from_proto(incoming.event),  # type: ignore[arg-type]
    )


class EventsServicer(api_grpc.EventsServicer):
    def __init__(self, events: Exchange) -> None:
        self.events = events

    async def Publish(self, request: api.PublishRequest, context: object) -> empty_pb2.Empty:
        if not request.HasField("event"):
            raise InvalidArgument("event must not be empty")
        envelope = Envelope(
            timestamp=datetime.now(UTC),
            namespace=namespaces.require(),
            topic=validate_topic(request.topic),
            event=convert.any_from_proto(request.event),  # type: ignore[arg-type]
        )
        self.events.forward(envelope)
        return empty_pb2.Empty()

    async def Forward(self, request: api.ForwardRequest, context: object) -> empty_pb2.Empty:
        self.events.forward(forwarded(request.envelope))
        return empty_pb2.Empty()

    async def Subscribe(self, request: api.SubscribeRequest, context: object) -> AsyncIterator[api.Envelope]:
        # Like containerd, a subscription sees every namespace; filters narrow it.
        async for envelope in self.events.subscribe(list(request.filters)):
            yield api.Envelope(
                timestamp=convert.datetime_to_timestamp(envelope.timestamp),
                namespace=envelope.namespace,
                topic=envelope.topic,
                event=convert.any_to_proto(envelope.event),
            )
