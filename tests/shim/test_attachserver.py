"""The shim's attach server on its own (no runc): the URI, the HELLO exchange, output to the
clients that asked for it, stdin into a pipe, ``stdin_once``, detaching on the end of stdin, a
client that stops reading dropped without holding up the output, and END for everyone."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.shim import attachproto
from ctrpy.shim.attachproto import END, HELLO, STDERR, STDIN, STDIN_EOF, STDOUT, frame, read_frame
from ctrpy.shim.attachserver import CLIENT_BUFFER, AttachServer
from tests.shim.conftest import aio

DEADLINE = 30.0


def test_uri_round_trip() -> None:
    assert attachproto.parse_uri(attachproto.uri(stdin=True, stdin_once=False)) == attachproto.Options(True, False)
    assert attachproto.parse_uri("ctrpy-attach://") == attachproto.Options()
    for bad in ("ctrpy-attach://host?stdin=1", "ctrpy-attach://?stdin=yes", "ctrpy-attach://?other=1",
                "fifo:///x"):
        with pytest.raises(InvalidArgument):
            attachproto.parse_uri(bad)


@asynccontextmanager
async def serving(*, tty: bool = False, stdin_once: bool = False,
                  with_stdin: bool = True) -> AsyncIterator[tuple[AttachServer, int]]:
    """An attach server on a temporary socket whose stdin is a pipe; yields it and the pipe's
    read end (what the "container" reads)."""
    directory = tempfile.mkdtemp(prefix="attach-")
    r, w = os.pipe()
    os.set_blocking(w, False)
    server = AttachServer(os.path.join(directory, "s-a"), tty=tty, stdin=w if with_stdin else -1,
                          stdin_once=stdin_once, owns_stdin=True)
    await server.start()
    try:
        yield server, r
    finally:
        await server.finish()
        os.close(r)
        if not with_stdin:
            os.close(w)
        os.rmdir(directory)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, granted: dict[str, bool]) -> None:
        self.reader, self.writer, self.granted = reader, writer, granted

    async def next(self) -> tuple[int, bytes] | None:
        return await asyncio.wait_for(read_frame(self.reader), DEADLINE)

    def send(self, kind: int, data: bytes = b"") -> None:
        self.writer.write(frame(kind, data))


async def attach(server: AttachServer, **wants: bool) -> Client:
    reader, writer = await asyncio.open_unix_connection(server.path)
    writer.write(attachproto.hello(**wants))
    reply = await asyncio.wait_for(read_frame(reader), DEADLINE)
    assert reply is not None and reply[0] == HELLO
    return Client(reader, writer, attachproto.parse_hello(reply[1]))


async def read_pipe(fd: int, wanted: bytes) -> bytes:
    got = b""
    loop = asyncio.get_running_loop()
    while wanted not in got:
        chunk = await loop.run_in_executor(None, os.read, fd, 4096)
        assert chunk, f"end of the pipe before {wanted!r}: {got!r}"
        got += chunk
    return got


@aio
async def test_output_goes_to_the_clients_that_asked() -> None:
    async with serving() as (server, _):
        both = await attach(server, stdout=True, stderr=True)
        out_only = await attach(server, stdout=True)
        assert both.granted == {"stdin": False, "tty": False}
        server.output(STDOUT, b"out")
        server.output(STDERR, b"err")
        assert await both.next() == (STDOUT, b"out") and await both.next() == (STDERR, b"err")
        assert await out_only.next() == (STDOUT, b"out")
        await server.finish()
        assert await both.next() == (END, b"") and await out_only.next() == (END, b"")
        assert await both.next() is None


@aio
async def test_stdin_reaches_the_pipe_and_its_end_detaches() -> None:
    async with serving() as (server, r):
        client = await attach(server, stdin=True, stdout=True)
        assert client.granted["stdin"]
        client.send(STDIN, b"hello\n")
        assert await read_pipe(r, b"hello\n") == b"hello\n"
        client.send(STDIN_EOF)
        assert await client.next() == (END, b"")  # detached; the container's stdin stays open
        again = await attach(server, stdin=True)
        assert again.granted["stdin"]
        again.send(STDIN, b"more\n")
        assert await read_pipe(r, b"more\n") == b"more\n"


@aio
async def test_stdin_once_closes_the_pipe_for_good() -> None:
    async with serving(stdin_once=True) as (server, r):
        client = await attach(server, stdin=True, stdout=True)
        client.send(STDIN, b"last\n")
        client.send(STDIN_EOF)
        assert await read_pipe(r, b"last\n") == b"last\n"
        assert await asyncio.get_running_loop().run_in_executor(None, os.read, r, 10) == b""  # EOF
        server.output(STDOUT, b"still attached")
        assert await client.next() == (STDOUT, b"still attached")
        later = await attach(server, stdin=True, stdout=True)
        assert later.granted["stdin"] is False


@aio
async def test_a_client_that_stops_reading_is_dropped() -> None:
    async with serving(with_stdin=False) as (server, _):
        stuck = await attach(server, stdout=True)
        stuck.writer.transport.pause_reading()  # type: ignore[attr-defined]
        reading = await attach(server, stdout=True)
        chunk = b"x" * 65536
        for _ in range(4 * CLIENT_BUFFER // len(chunk)):  # output never waits for either client
            server.output(STDOUT, chunk)
            assert await reading.next() == (STDOUT, chunk)
        assert server.clients == 1  # the one that reads
