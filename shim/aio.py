"""Non-blocking file descriptors on the event loop: wait, read, write, without threads.

Pipes, FIFOs and pty masters cannot be registered with asyncio's transports in the way the
shim needs (one descriptor shared by two directions, FIFOs held open for both ends), so the
shim drives them directly with ``add_reader``/``add_writer``. Every descriptor given to these
helpers must be non-blocking.
"""

from __future__ import annotations

import asyncio
import errno
import os

CHUNK = 32 * 1024


def close_fd(fd: int) -> None:
    """Close ``fd``, first dropping any watch the running event loop has on it.

    A watch left behind would survive the close in asyncio's selector map and silently
    swallow the next descriptor that reuses the number.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        loop.remove_reader(fd)
        loop.remove_writer(fd)
    try:
        os.close(fd)
    except OSError:
        pass


def set_nonblocking(fd: int) -> None:
    """Put ``fd`` in non-blocking mode."""
    os.set_blocking(fd, False)


async def wait_readable(fd: int) -> None:
    """Return once ``fd`` is readable (or at EOF / in error)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, _set_done, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    """Return once ``fd`` is writable (or in error)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, _set_done, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def read_some(fd: int, size: int = CHUNK) -> bytes:
    """Read what is available, waiting for data; b"" means end of file.

    A pty master reports EIO once its slave side is closed everywhere: that is an end of file.
    """
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            await wait_readable(fd)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise


def read_available(fd: int, size: int = CHUNK) -> bytes | None:
    """Read without waiting: data, b"" at end of file, or None when nothing is buffered."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno == errno.EIO:
            return b""
        raise


async def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``, waiting while the descriptor is full.

    Raises OSError (``BrokenPipeError`` when nobody reads the other end).
    """
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await wait_writable(fd)
            continue
        view = view[written:]


async def read_to_eof(fd: int) -> bytes:
    """Read until end of file."""
    parts: list[bytes] = []
    while True:
        chunk = await read_some(fd)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
