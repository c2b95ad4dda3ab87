"""Starting and cleaning up shims from ctrpyd.

A fresh Python process that imports grpc costs about 130 ms and 15 MB of private memory; one
forked from a parent that has already imported it costs a few ms and a few MB. So
:class:`ShimLauncher` keeps one *template* process (``ctrpy-shim template``, see
:mod:`ctrpy.shim.template`) and asks it over a unix socket to fork each shim. When the template
is not available (not started, died, or refused) a shim is spawned the slow way,
``<sys.executable> -m ctrpy.shim.main start ...``. Either way the shim is detached, prints or
sends its address, and :meth:`ShimLauncher.start_shim` returns a connected
:class:`~ctrpy.manager.runtime.client.ShimClient`.

The template reads its stdin from a pipe held by ctrpyd: when ctrpyd exits or is killed the pipe
closes and the template exits too. The shims it forked are not its children and keep running.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import structlog

from ctrpy import errors
from ctrpy.errors import CtrpyError
from ctrpy.shim.config import ShimConfig, task_attach_socket
from ctrpy.shim.files import ExitInfo

from .. import tracing
from .bundle import Bundle
from .client import DEFAULT_TIMEOUTS, ShimClient, ShimTimeouts

log = structlog.get_logger("ctrpy.runtime")

SHIM_MODULE = "ctrpy.shim.main"
# Shims run as `python -P -m ctrpy.shim.main`: -P keeps ctrpyd's working directory off sys.path,
# where a ctrpy/ directory (a source checkout) would shadow the installed package.
TEMPLATE_SOCKET = "template"
START_TIMEOUT = 30.0
TEMPLATE_READY_TIMEOUT = 30.0
DELETE_TIMEOUT = 60.0
MAX_REPLY = 64 * 1024

_KINDS: tuple[type[CtrpyError], ...] = (
    errors.InvalidArgument,
    errors.NotFound,
    errors.AlreadyExists,
    errors.FailedPrecondition,
    errors.Unavailable,
)


def error_from_message(message: str) -> CtrpyError:
    """The error kind whose suffix ends ``message`` (``...: already exists``), else CtrpyError."""
    for kind in _KINDS:
        if message.endswith(": " + kind.suffix):
            return kind(message)
    return CtrpyError(message)


async def run_shim_delete(
    state_dir: str | os.PathLike[str],
    bundle: Bundle,
    *,
    runtime_binary: str = "runc",
    python: str = sys.executable,
) -> ExitInfo:
    """Run ``ctrpy-shim delete`` for a bundle whose shim is gone; returns the exit it found.

    The exit is the one the shim wrote to the bundle, else status 255. Raises CtrpyError when
    the cleanup fails (the bundle is then left in place).
    """
    config = ShimConfig(
        bundle.namespace, bundle.id, str(bundle.path), "", os.fspath(state_dir), runtime_binary
    )
    proc = await asyncio.create_subprocess_exec(
        python, "-P", "-m", SHIM_MODULE, "delete", *config.to_args(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DELETE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise errors.DeadlineExceeded(f'ctrpy-shim delete of task "{bundle.id}"') from None
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().removeprefix("ctrpy-shim: ")
        raise error_from_message(message or f"ctrpy-shim delete exited with {proc.returncode}")
    return ExitInfo.from_json(out.decode())


class ShimLauncher:
    """Starts shims for ctrpyd (through the template when it can); see the module docstring.

    ``state_dir`` is ctrpyd's state directory (bundles, shim sockets, runc state);
    ``manager_address`` is ctrpyd's ttrpc socket (``[ttrpc] address``), where shims forward
    their task events; ``timeouts`` are
    the deadlines of the clients it returns; ``spare`` has the template keep a spare shim
    forked ahead of time (:mod:`ctrpy.shim.spare`).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        manager_address: str,
        *,
        runtime_binary: str = "runc",
        use_template: bool = True,
        spare: bool = True,
        python: str = sys.executable,
        timeouts: ShimTimeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.timeouts = timeouts
        self.manager_address = manager_address
        self.runtime_binary = runtime_binary
        self.use_template = use_template
        self.spare = spare
        self.python = python
        self._template: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._starting: asyncio.Future[None] | None = None

    @property
    def template_socket(self) -> Path:
        """``<state>/s/template``."""
        return self.state_dir / "s" / TEMPLATE_SOCKET

    @property
    def template_pid(self) -> int | None:
        """The template's pid while it runs."""
        t = self._template
        return t.pid if t is not None and t.returncode is None else None

    async def start(self, *, wait: bool = True) -> None:
        """Start the template (when enabled). A template that fails to start is logged, not
        raised: shims are then spawned without it. With ``wait`` false it comes up in the
        background and the first shim to start waits for it: a restarting ctrpyd does not need
        it to take back its tasks, and serves them sooner (the template's imports take a
        fresh Python a few hundred ms)."""
        if not self.use_template:
            return
        if wait:
            async with self._lock:
                await self._start_template()
        elif self._starting is None:
            self._starting = asyncio.ensure_future(self._start_in_background())

    async def _start_in_background(self) -> None:
        async with self._lock:
            try:
                await self._start_template()
            except Exception as exc:  # as a template that does not come up: shims are spawned
                log.warning("shim template did not start; spawning shims instead", error=str(exc))

    async def _start_template(self) -> None:
        if self.template_pid is not None:
            return
        self.template_socket.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
        spare = ["--spare"] if self.spare else []
        proc = await asyncio.create_subprocess_exec(
            self.python, "-P", "-m", SHIM_MODULE, "template", "--socket", str(self.template_socket), *spare,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), TEMPLATE_READY_TIMEOUT)
        except TimeoutError:
            line = b""
        if line.strip() != b"ready":
            log.warning("shim template did not start; spawning shims instead", pid=proc.pid)
            await _stop(proc)
            return
        self._template = proc
        log.info("shim template started", pid=proc.pid)

    async def close(self) -> None:
        """Stop the template (shims keep running)."""
        if self._starting is not None:
            await self._starting  # a template still coming up is stopped below, not left behind
        async with self._lock:
            if self._template is not None:
                await _stop(self._template)
                self._template = None

    @tracing.traced("shim start")
    async def start_shim(
        self,
        bundle: Bundle,
        *,
        runtime_binary: str | None = None,
        runtime_root: str = "",
    ) -> ShimClient:
        """Start a shim for ``bundle`` and return a client connected to it.

        Raises AlreadyExists when a shim already serves that task, CtrpyError when the shim
        could not start.
        """
        config = ShimConfig(
            namespace=bundle.namespace,
            id=bundle.id,
            bundle=str(bundle.path),
            address=self.manager_address,
            state_root=str(self.state_dir),
            runtime_binary=runtime_binary or self.runtime_binary,
            runtime_root=runtime_root,
        )
        reply: dict[str, Any] | None = None
        if self.use_template:
            reply = await self._fork_from_template(config)
        if reply is None:
            reply = await self._spawn(config)
        if "error" in reply:
            raise error_from_message(str(reply["error"]))
        # The shim replies once its server is listening, so no Connect round trip is needed:
        # the client dials at the first call (Create), which is the next one anyway.
        return ShimClient(
            str(reply["address"]), bundle.id, namespace=bundle.namespace,
            shim_pid=bundle.shim_pid() or 0, timeouts=self.timeouts,
        )  # fmt: skip

    def join_shim(self, bundle: Bundle, sibling: ShimClient) -> ShimClient:
        """A client for ``bundle``'s task in the running shim of ``sibling`` (its pod's), on
        the sibling's connection: the shim adds the task at Create and writes its own address
        and pid into the bundle."""
        return sibling.join(bundle.id, task_attach_socket(str(self.state_dir), bundle.namespace, bundle.id))

    async def _fork_from_template(self, config: ShimConfig) -> dict[str, Any] | None:
        """The template's reply, or None when there is no usable template."""
        async with self._lock:
            if self.template_pid is None:
                await self._start_template()
            if self.template_pid is None:
                return None
        # A bare socket on the loop: no stream transport, protocol and tasks for one exchange.
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                await loop.sock_connect(sock, str(self.template_socket))
            except OSError as exc:
                log.warning("shim template unreachable", error=str(exc))
                return None
            try:
                async with asyncio.timeout(START_TIMEOUT):
                    await loop.sock_sendall(sock, json.dumps(config.to_dict()).encode() + b"\n")
                    line = await _read_line(loop, sock)
            except (OSError, TimeoutError) as exc:
                log.warning("shim template failed", error=str(exc))
                return None
        finally:
            sock.close()
        try:
            reply = json.loads(line)
        except ValueError:
            return {"error": "shim exited before it was ready"}
        return reply if isinstance(reply, dict) else {"error": "malformed reply from shim template"}

    async def _spawn(self, config: ShimConfig) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            self.python, "-P", "-m", SHIM_MODULE, "start", *config.to_args(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return {"error": "ctrpy-shim start timed out"}
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().removeprefix("ctrpy-shim: ")
            return {"error": message or f"ctrpy-shim start exited with {proc.returncode}"}
        return {"address": out.decode().strip()}

    async def delete_shim(self, bundle: Bundle) -> ExitInfo:
        """Clean up after a dead shim (``ctrpy-shim delete``); see :func:`run_shim_delete`."""
        return await run_shim_delete(
            self.state_dir, bundle, runtime_binary=self.runtime_binary, python=self.python
        )


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    """The first line ``sock`` sends (all it sent, when it closes before a newline)."""
    data = b""
    while b"\n" not in data and len(data) < MAX_REPLY:
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 5.0)
    except TimeoutError:
        proc.kill()
        await proc.wait()
