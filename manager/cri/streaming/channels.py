"""Kubernetes' remotecommand channels over WebSocket, and the exit status every transport sends.

Each WebSocket message carries one channel's bytes, led by the channel number: 0 stdin,
1 stdout, 2 stderr, 3 error (how the command ended), 4 resize (terminal sizes as JSON). The
``base64`` variants send text messages instead: the channel as an ASCII digit, then the bytes in
base64 (for browsers of old). ``v5.channel.k8s.io`` adds message 255 + channel, which half-closes
a channel: the only way a WebSocket client can say that its stdin has ended.

What the error channel carries differs by version, as in the kubelet: from v4 on a
``metav1.Status`` JSON for success and failure alike (the exit code in its causes), before v4
only the failure's message and nothing on success.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE = 255


@dataclass(frozen=True)
class Protocol:
    """One WebSocket subprotocol: its name, its encoding and what it can say."""

    name: str
    binary: bool  # raw bytes in binary messages; else base64 in text messages
    status_json: bool  # v4+: a Status JSON on the error channel
    half_close: bool  # v5: message 255 closes one channel


#: In the order a server prefers them when a client offers several.
PROTOCOLS = (
    Protocol("v5.channel.k8s.io", True, True, True),
    Protocol("v4.channel.k8s.io", True, True, False),
    Protocol("v4.base64.channel.k8s.io", False, True, False),
    Protocol("channel.k8s.io", True, False, False),
    Protocol("base64.channel.k8s.io", False, False, False),
)
BY_NAME = {p.name: p for p in PROTOCOLS}
#: What a client that names no subprotocol gets (the kubelet's choice too).
DEFAULT = BY_NAME["channel.k8s.io"]


def select(offered: list[str]) -> Protocol | None:
    """The protocol to answer with among those the client offered (None: none we speak)."""
    for protocol in PROTOCOLS:
        if protocol.name in offered:
            return protocol
    return None


def encode(protocol: Protocol, channel: int, data: bytes) -> bytes | str:
    if protocol.binary:
        return bytes((channel,)) + data
    return chr(ord("0") + channel) + base64.b64encode(data).decode("ascii")


def decode(protocol: Protocol, message: bytes | str) -> tuple[int, bytes] | None:
    """``(channel, data)`` of one message; None for an empty or undecodable one (ignored, as
    the kubelet does). A v5 half-close comes back as ``(CLOSE, bytes([channel]))``."""
    if isinstance(message, str):
        if protocol.binary or not message:
            return None
        try:
            return ord(message[0]) - ord("0"), base64.b64decode(message[1:], validate=True)
        except ValueError:
            return None
    if not message or not protocol.binary:
        return None
    if message[0] == CLOSE and not protocol.half_close:
        return None
    return message[0], bytes(message[1:])


def exit_status(protocol: Protocol, exit_code: int, cmd: list[str]) -> bytes:
    """What the error channel carries once the command ended with ``exit_code`` (b"" for a
    pre-v4 success). The message is the kubelet's, around containerd's exit error."""
    if exit_code == 0:
        return _json({"metadata": {}, "status": "Success"}) if protocol.status_json else b""
    message = ("command terminated with non-zero exit code: "
               f"error executing command [{' '.join(cmd)}], exit code {exit_code}")
    if not protocol.status_json:
        return message.encode()
    return _json({"metadata": {}, "status": "Failure", "message": message, "reason": "NonZeroExitCode",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}})


def internal_error(protocol: Protocol, error: str) -> bytes:
    """The error channel when the command could not be run at all (the kubelet's InternalError)."""
    message = f"Internal error occurred: error executing command in container: {error}"
    if not protocol.status_json:
        return message.encode()
    return _json({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
                  "details": {"causes": [{"message": f"error executing command in container: {error}"}]},
                  "code": 500})


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class ResizeDecoder:
    """Terminal sizes from the resize channel: JSON objects ``{"Width": w, "Height": h}``, one
    after another, possibly split across messages (the kubelet reads them as a JSON stream)."""

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        self._buffer += data.decode("utf-8", "replace")
        sizes: list[tuple[int, int]] = []
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                return sizes
            try:
                value, end = self._decoder.raw_decode(text)
            except ValueError:
                self._buffer = text[-4096:]  # an object still arriving (bounded if it is garbage)
                return sizes
            self._buffer = text[end:]
            if isinstance(value, dict):
                width, height = value.get("Width", 0), value.get("Height", 0)
                if isinstance(width, int) and isinstance(height, int) and 0 <= width < 65536 \
                        and 0 <= height < 65536:
                    sizes.append((width, height))
