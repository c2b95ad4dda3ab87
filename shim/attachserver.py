"""The shim's side of attach: a unix socket whose clients see the container's output and type
into its stdin (protocol and rationale in :mod:`ctrpy.shim.attachproto`).

The output pumps of :class:`ctrpy.shim.stdio.ProcessIO` hand every chunk they read to
:meth:`AttachServer.output` after writing the CRI log; the chunk is queued on each client's
socket without waiting. A client whose unsent output grows past :data:`CLIENT_BUFFER` is
disconnected, so a client that stops reading never holds up the container or its log.

Stdin, when the container has one, is written by whichever client sends it, one chunk at a
time, waiting while the container does not read (that client's socket then backs up to ctrpyd,
and to the user). How a client's end of stdin is taken follows containerd's ``ContainerIO.Attach``:
with ``stdin_once`` and no terminal, the first such end closes the container's stdin for good
(the client stays attached to the output); otherwise it only detaches that client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from ctrpy.errors import CtrpyError

from . import aio
from .attachproto import END, HELLO, STDERR, STDIN, STDIN_EOF, STDOUT, frame, hello, parse_hello, read_frame

log = logging.getLogger("ctrpy.shim")

#: Unsent output a client may have before it is dropped.
CLIENT_BUFFER = 1024 * 1024
#: How long a new client has to say what it wants.
HELLO_TIMEOUT = 10.0
SOCKET_MODE = 0o600


class _Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.kinds: frozenset[int] = frozenset()

    def send(self, kind: int, data: bytes) -> bool:
        """Queue a frame; False (and the client disconnected) when it has fallen behind."""
        transport = self.writer.transport
        if transport.is_closing():
            return False
        if transport.get_write_buffer_size() > CLIENT_BUFFER:
            transport.abort()
            return False
        self.writer.write(frame(kind, data))
        return True

    def end(self) -> None:
        """Say END and close once what is queued has been sent."""
        if not self.writer.transport.is_closing():
            self.writer.write(frame(END))
            self.writer.close()


class AttachServer:
    """Attach clients of one process. ``stdin`` is the fd clients write to (-1: no stdin);
    ``owns_stdin``: whether closing stdin closes that fd (a pipe; not a terminal's master)."""

    def __init__(self, path: str, *, tty: bool, stdin: int, stdin_once: bool, owns_stdin: bool) -> None:
        self.path = path
        self.tty = tty
        self._stdin = stdin
        self._stdin_once = stdin_once and not tty
        self._owns_stdin = owns_stdin
        self._stdin_lock = asyncio.Lock()
        self._writing: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._finished = False

    @property
    def clients(self) -> int:
        """How many clients are attached."""
        return len(self._clients)

    async def start(self) -> None:
        """Listen on :attr:`path` (a stale socket file there is replaced); CtrpyError on failure."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path)
            os.chmod(self.path, SOCKET_MODE)
        except OSError as exc:
            await self.finish()
            raise CtrpyError(f'failed to listen for attach clients on "{self.path}": {exc.strerror}') from None

    def output(self, kind: int, data: bytes) -> None:
        """Send a chunk of the container's output to every client that asked for it."""
        if not data:
            return
        for client in list(self._clients):
            if kind in client.kinds and not client.send(kind, data):
                log.warning("attach client fell behind: disconnected")
                self._clients.discard(client)

    async def close_stdin(self) -> None:
        """Close the container's stdin (its pipe; a terminal only stops taking input)."""
        fd, self._stdin = self._stdin, -1
        if fd < 0:
            return
        if self._writing is not None:
            self._writing.cancel()
            await asyncio.wait({self._writing})
        if self._owns_stdin:
            aio.close_fd(fd)

    async def finish(self) -> None:
        """The output has ended: END to every client, stop listening, close stdin."""
        self._finished = True
        for client in list(self._clients):
            client.end()
        self._clients.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        await self.close_stdin()
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=1.0)
            for job in pending:
                job.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ---- one client ----------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        job = asyncio.current_task()
        if job is not None:
            self._handlers.add(job)
        client = _Client(writer)
        try:
            await self._session(client, reader)
        except (CtrpyError, OSError, TimeoutError) as exc:
            log.info("attach client ended: %s", exc)
        finally:
            self._clients.discard(client)
            if job is not None:
                self._handlers.discard(job)
            writer.close()

    async def _session(self, client: _Client, reader: asyncio.StreamReader) -> None:
        first = await asyncio.wait_for(read_frame(reader), HELLO_TIMEOUT)
        if first is None or first[0] != HELLO:
            return
        wants = parse_hello(first[1])
        has_stdin = wants.get("stdin", False) and self._stdin >= 0
        client.kinds = frozenset(
            kind for kind, name in ((STDOUT, "stdout"), (STDERR, "stderr"))
            if wants.get(name, False) and not (self.tty and kind == STDERR)
        )  # fmt: skip
        client.writer.write(hello(stdin=has_stdin, tty=self.tty))
        if self._finished:
            client.end()
            return
        self._clients.add(client)
        stdin_open = has_stdin
        while (got := await read_frame(reader)) is not None:
            kind, data = got
            if kind == STDIN and stdin_open:
                stdin_open = await self._write_stdin(data)
            elif kind == STDIN_EOF and stdin_open:
                stdin_open = False
                if not self._stdin_once:
                    client.end()  # containerd: the end of a client's stdin detaches it
                    return
                await self.close_stdin()
        # The client is gone: with stdin_once its stdin counts as ended.
        if stdin_open and self._stdin_once:
            await self.close_stdin()

    async def _write_stdin(self, data: bytes) -> bool:
        """Write a chunk into the container's stdin; False once stdin is gone."""
        async with self._stdin_lock:
            if self._stdin < 0:
                return False
            job = asyncio.ensure_future(aio.write_all(self._stdin, data))
            self._writing = job
            try:
                await asyncio.wait({job})
            finally:
                self._writing = None
                if not job.done():
                    job.cancel()
            # Cancelled: stdin was closed; an error: the container closed its end.
            return not job.cancelled() and job.exception() is None
