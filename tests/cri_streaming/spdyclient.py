"""A remotecommand client over SPDY/3.1 for the tests, built on ctrpyd's own framing
(:mod:`ctrpy.manager.cri.streaming.spdyconn`) and behaving as client-go's does: an HTTP/1.1
upgrade request offering ``X-Stream-Protocol-Version`` values, then one stream per channel
opened in client-go's order (error, stdin, stdout, stderr, resize), stdin half-closed when
it has been sent, every output read to its end."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ctrpy.manager.cri.streaming.spdyconn import Connection, ConnectionClosed, Stream, StreamReset

V4, V3, V2, V1 = "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"
#: What client-go offers, in its order.
CLIENT_GO = (V4, V3, V2, V1)


@dataclass
class Reply:
    """The HTTP answer to the upgrade request."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def get(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name.lower()), "")

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


@dataclass
class Outcome:
    reply: Reply
    streams: dict[str, bytes] = field(default_factory=dict)
    reset: set[str] = field(default_factory=set)  # streams that ended with RST_STREAM

    def out(self, name: str) -> bytes:
        return self.streams.get(name, b"")

    @property
    def status(self) -> dict[str, object]:
        return json.loads(self.out("error"))  # type: ignore[no-any-return]


async def upgrade(url: str, versions: Sequence[str], *, method: str = "POST", upgrade_to: str = "SPDY/3.1",
                  ) -> tuple[Reply, asyncio.StreamReader, asyncio.StreamWriter]:
    """Send the upgrade request as SpdyRoundTripper does; the reply's head (and, unless it is
    101, its body) and the socket."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "User-Agent: ctrpy-tests",
             "Content-Length: 0", "Connection: Upgrade", f"Upgrade: {upgrade_to}"]
    lines += [f"X-Stream-Protocol-Version: {v}" for v in versions]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in head[1:] if line)]
    reply = Reply(status, headers)
    if status != 101:
        reply.body = await reader.read()
        writer.close()
    return reply, reader, writer


async def _drain(name: str, stream: Stream, outcome: Outcome) -> None:
    try:
        while data := await stream.read():
            outcome.streams[name] = outcome.out(name) + data
    except (StreamReset, ConnectionClosed):
        outcome.reset.add(name)


async def exec_session(url: str, versions: Sequence[str] = CLIENT_GO, *, stdin: bool = False, stdout: bool = True,
                       stderr: bool = True, tty: bool = False, sends: Sequence[tuple[str, bytes]] = (),
                       close_stdin: bool = True) -> Outcome:
    """Run one exec: ``sends`` are ``("stdin", data)`` / ``("resize", json)`` writes, in order,
    while the outputs are read; returns once error, stdout and stderr have ended."""
    reply, reader, writer = await upgrade(url, versions)
    outcome = Outcome(reply)
    if reply.status != 101:
        return outcome
    conn = Connection(reader, writer, server=False)
    conn.start()
    try:
        names = ["error", *(["stdin"] if stdin else []), *(["stdout"] if stdout else []),
                 *(["stderr"] if stderr and not tty else []),
                 *(["resize"] if tty and reply.get("X-Stream-Protocol-Version") in (V4, V3) else [])]
        streams = {name: await conn.open_stream({"streamtype": name}) for name in names}
        readers = [asyncio.ensure_future(_drain(name, streams[name], outcome))
                   for name in ("error", "stdout", "stderr") if name in streams]
        for name, data in sends:
            await streams[name].write(data)
        if stdin and close_stdin:
            with contextlib.suppress(StreamReset, ConnectionClosed):
                await streams["stdin"].close()
        await asyncio.gather(*readers)
    finally:
        await conn.aclose(grace=1.0)
    return outcome


def resize(width: int, height: int) -> bytes:
    return json.dumps({"Width": width, "Height": height}).encode()
