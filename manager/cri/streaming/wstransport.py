"""The remotecommand channels over one WebSocket connection (a :class:`.pump.Transport`).

Every message is one channel's bytes, the channel first (or a digit and base64 for the
``base64`` protocols): :mod:`.channels` encodes and decodes them. Stdin ends with a v5
half-close message; older protocols have no way to say it, so their stdin ends with the
connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, NegotiationError

from . import channels
from .channels import Protocol
from .pump import TransportClosed


def select(offered: Sequence[str]) -> str | None:
    """The subprotocol a remotecommand (exec, attach) answers with: none for a client that
    offers none (the pre-v4 binary channels, as the kubelet does); a refusal when it offers
    only ones we do not speak."""
    if not offered:
        return None
    protocol = channels.select(list(offered))
    if protocol is None:
        raise NegotiationError(f"requested protocol(s) are not supported: {list(offered)}")
    return protocol.name


class WebSocketTransport:
    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.protocol: Protocol = channels.BY_NAME.get(ws.subprotocol or "", channels.DEFAULT)

    async def ready(self, first: int) -> None:
        await self.send(first, b"")

    async def send(self, channel: int, data: bytes) -> None:
        try:
            await self.ws.send(channels.encode(self.protocol, channel, data))
        except ConnectionClosed as exc:
            raise TransportClosed("websocket connection closed") from exc

    async def incoming(self) -> AsyncIterator[tuple[int, bytes]]:
        try:
            async for message in self.ws:
                decoded = channels.decode(self.protocol, message)
                if decoded is not None:
                    yield decoded
        except ConnectionClosed:
            return

    async def close(self) -> None:
        await self.ws.close()
