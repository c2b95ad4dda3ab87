"""The template process: a pre-imported parent that forks shims on request.

ctrpyd starts one ``ctrpy-shim template --socket PATH``. It imports everything a shim needs
(the generated API, :mod:`ctrpy.ttrpc`, the shim's modules), rehearses a shim's first calls
(:mod:`ctrpy.shim.rehearsal`), freezes those objects out of the garbage collector so forked
children keep sharing their pages, and then creates no server or connection and starts no
thread: it only accepts connections on a unix socket.

Protocol, one request per connection: the client sends one JSON line, the
:meth:`~ctrpy.shim.config.ShimConfig.to_dict` of the shim it wants; the template forks
(:func:`~ctrpy.shim.daemon.fork_shim`) and the new shim itself answers on the same
connection with ``{"address": ..., "pid": ...}`` or ``{"error": ...}``. Bad requests are
answered by the template with ``{"error": ...}``.

With ``--spare`` the template keeps one spare shim forked ahead of time (see
:mod:`ctrpy.shim.spare`): a request goes to that spare when it is ready, with the connection,
and the template forks the next spare once the request has left.

The template prints ``ready`` on stdout once it listens, and exits when its stdin reaches end
of file, which happens when ctrpyd closes it or dies: a template never outlives its manager.
Shims it forked are not its children and live on; its unclaimed spare exits with it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import gc
import json
import logging
import os
import select
import signal
import socket
import sys

from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2
from ctrpy.api.ctrpy.shim.v1 import shim_pb2
from ctrpy.api.ttrpc import request_pb2
from ctrpy.errors import CtrpyError
from ctrpy.ttrpc import wire

from .config import ShimConfig
from .daemon import configure_logging, fork_shim, set_process_name, write_reply
from .events import pack
from .rehearsal import rehearse
from .server import claim_socket
from .spare import SpareSlot

# The template's comm; the shims it forks rename themselves "ctrpy-shim".
TEMPLATE_NAME = b"ctrpy-template"
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 64 * 1024


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _serve_one(conn: socket.socket, listener: socket.socket, spare: SpareSlot | None = None) -> None:
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        line = _read_line(conn)
        request = json.loads(line)
        if not isinstance(request, dict):
            raise ValueError("request is not a JSON object")
        config = ShimConfig.from_dict(request)
    except (OSError, ValueError, CtrpyError) as exc:
        with contextlib.suppress(OSError):
            conn.sendall((json.dumps({"error": f"bad request: {exc}"}) + "\n").encode())
        conn.close()
        return
    conn.setblocking(True)
    fd = conn.detach()
    try:
        if spare is None or not spare.hand(line, fd):
            fork_shim(config, fd, inherited=[listener])
    except OSError as exc:
        write_reply(os.dup(fd), {"error": f"fork failed: {exc}"})
    finally:
        os.close(fd)


def warm_up() -> None:
    """Do once, before any fork, the first-use work every shim would otherwise repeat.

    Running an event loop and building each message type once fills lazily made caches in
    the template's memory, where the shims share them instead of each writing its own copy.
    No server or connection is made and no thread outlives this.
    """

    async def exercise() -> None:
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, lambda: None)
        loop.remove_signal_handler(signal.SIGCHLD)
        event = asyncio.Event()
        loop.call_soon(event.set)
        await asyncio.wait_for(event.wait(), 1.0)
        await asyncio.gather(asyncio.shield(asyncio.sleep(0)), asyncio.ensure_future(asyncio.sleep(0)))
        for name in shim_pb2.DESCRIPTOR.message_types_by_name:
            getattr(shim_pb2, name)().SerializeToString()
        for name in task_events.DESCRIPTOR.message_types_by_name:
            pack(getattr(task_events, name)())
        forward = events_pb2.ForwardRequest(envelope=events_pb2.Envelope(event=pack(task_events.TaskExit())))
        for message in (request_pb2.Request(payload=forward.SerializeToString()), request_pb2.Response()):
            data = wire.frame(1, wire.REQUEST, message.SerializeToString())
            for item in wire.FrameReader().feed(data):
                type(message).FromString(item.payload or b"")
        json.loads(json.dumps({"warm": [1, "up"]}))

    asyncio.run(exercise())
    # open(..., encoding="ascii") (runc's pid file) imports its codec: once here, not per shim.
    codecs.lookup("ascii")
    configure_logging()


_FILLERS: list[object] = []


def _available_blocks() -> dict[int, int]:
    """pymalloc's free blocks in pools already in use, by block size (from its statistics,
    which CPython prints to stderr; nothing when pymalloc is not in use)."""
    if not hasattr(sys, "_debugmallocstats"):
        return {}
    saved = os.dup(2)
    fd = os.memfd_create("mallocstats")
    try:
        sys.stderr.flush()
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(fd, "r") as f:
        text = f.read()
    available: dict[int, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 5 and all(x.isdigit() for x in fields):
            available[int(fields[1])] = int(fields[4])
    return available


def _filler(size: int, number: int) -> object:
    """A new object (never a shared constant) that pymalloc serves from blocks of ``size`` bytes."""
    if size == 16:
        return object()
    if size == 32:
        return (1 << 40) + number  # an int of two 30-bit digits: 32 bytes
    return bytes(size - 33)  # bytes: 33 bytes of header and terminator, then the data


def fill_free_blocks() -> int:
    """Occupy every free pymalloc block in partly used pools; returns how many were taken.

    A forked shim allocates its new objects into the first free blocks pymalloc finds, which
    are scattered over pages it shares with the template: each such allocation copies a whole
    page. With those blocks taken (by objects kept here for the template's life), the shim's
    allocations go to empty pools and fill their pages densely.
    """
    taken = 0
    for _ in range(2):  # filling frees a few blocks of its own (loop counters, list growth)
        for size, count in _available_blocks().items():
            if size < 16 or size > 512 or size % 16:
                continue  # not a size class this knows how to fill
            for number in range(count):
                _FILLERS.append(_filler(size, number))
            taken += count
    return taken


def run(socket_path: str, *, spare: bool = False) -> int:
    """Serve fork requests on ``socket_path`` until stdin closes; returns the exit status.
    With ``spare``, a request is served by a spare shim forked ahead of time when one is ready
    (:mod:`ctrpy.shim.spare`), and the next spare is forked after the answer is on its way."""
    set_process_name(TEMPLATE_NAME)
    claim_socket(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(64)
    warm_up()
    try:
        rehearse(os.path.dirname(socket_path))
    except Exception:  # a rehearsal only saves the shims memory: serve without it
        logging.getLogger("ctrpy.shim").warning("shim rehearsal failed", exc_info=True)
    # Everything made so far is shared with the shims: keep the collector off those pages.
    gc.collect()
    fill_free_blocks()
    gc.freeze()
    print("ready", flush=True)
    slot = SpareSlot(os.path.dirname(socket_path)) if spare else None
    try:
        while True:
            if slot is not None:
                slot.fork([listener])  # a no-op while one is there
            watched = [0, listener.fileno()] + ([slot.ctl.fileno()] if slot and slot.ctl else [])
            readable, _, _ = select.select(watched, [], [])
            if 0 in readable and not os.read(0, 4096):
                return 0
            if slot is not None and slot.ctl is not None and slot.ctl.fileno() in readable:
                slot.on_event()
            if listener.fileno() in readable:
                conn, _ = listener.accept()
                _serve_one(conn, listener, slot)
    except KeyboardInterrupt:
        return 0
    finally:
        if slot is not None:
            slot.close()  # an unclaimed spare exits with its template
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        sys.stdout.flush()
