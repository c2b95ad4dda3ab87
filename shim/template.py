"""The template process: a pre-imported parent that forks shims on request.

ctrpyd starts one ``ctrpy-shim template --socket PATH``. It imports everything a shim needs
(grpc, the generated API, the shim's modules), freezes those objects out of the garbage
collector so forked children keep sharing their pages, and then creates no gRPC channel or
server and starts no thread: it only accepts connections on a unix socket.

Protocol, one request per connection: the client sends one JSON line, the
:meth:`~ctrpy.shim.config.ShimConfig.to_dict` of the shim it wants; the template forks
(:func:`~ctrpy.shim.daemon.fork_shim`) and the new shim itself answers on the same
connection with ``{"address": ..., "pid": ...}`` or ``{"error": ...}``. Bad requests are
answered by the template with ``{"error": ...}``.

The template prints ``ready`` on stdout once it listens, and exits when its stdin reaches end
of file, which happens when ctrpyd closes it or dies: a template never outlives its manager.
Shims it forked are not its children and live on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import select
import socket
import sys

from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.ctrpy.shim.v1 import shim_pb2
from ctrpy.errors import CtrpyError

from .config import ShimConfig
from .daemon import fork_shim, set_process_name, write_reply
from .events import pack
from .server import claim_socket

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


def _serve_one(conn: socket.socket, listener: socket.socket) -> None:
    conn.settimeout(REQUEST_TIMEOUT)
    try:
        request = json.loads(_read_line(conn))
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
        fork_shim(config, fd, inherited=[listener])
    except OSError as exc:
        write_reply(os.dup(fd), {"error": f"fork failed: {exc}"})
    finally:
        os.close(fd)


def warm_up() -> None:
    """Do once, before any fork, the first-use work every shim would otherwise repeat.

    Running an event loop and building each message type once fills lazily made caches in
    the template's memory, where the shims share them instead of each writing its own copy.
    No gRPC channel or server is made and no thread outlives this.
    """

    async def exercise() -> None:
        await asyncio.sleep(0)
        for name in shim_pb2.DESCRIPTOR.message_types_by_name:
            getattr(shim_pb2, name)().SerializeToString()
        for name in task_events.DESCRIPTOR.message_types_by_name:
            pack(getattr(task_events, name)())
        json.loads(json.dumps({"warm": [1, "up"]}))

    asyncio.run(exercise())


def run(socket_path: str) -> int:
    """Serve fork requests on ``socket_path`` until stdin closes; returns the exit status."""
    set_process_name(TEMPLATE_NAME)
    claim_socket(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(64)
    warm_up()
    # Everything made so far is shared with the shims: keep the collector off those pages.
    gc.collect()
    gc.freeze()
    print("ready", flush=True)
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    poller.register(0, select.POLLIN | select.POLLHUP)
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == 0:
                    if not os.read(0, 4096):
                        return 0
                    continue
                conn, _ = listener.accept()
                _serve_one(conn, listener)
    except KeyboardInterrupt:
        return 0
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        sys.stdout.flush()
