"""A shim's life without a container, rehearsed by the template before it forks any shim.

Why: a forked shim shares the template's pages until it writes to them, and CPython 3.11
writes where one would not expect. The type attribute cache holds a reference to each name
it caches, so every lookup the template never made writes two reference counts (the new
name's and the evicted one's), each on a page of its own; and a function run fewer than eight
times has its warm-up counter bumped, then its bytecode rewritten (quickened) in place, on its
first calls in the shim. Doing in the template, :data:`ROUNDS` times, what each shim does
first (take a claim, open its log, serve ttrpc on a unix socket, answer Connect, a Create up
to its first failure and Shutdown, forward events to ctrpyd over ttrpc) leaves those lookups
cached and that bytecode quickened in pages the shims share: 0.2-0.3 MiB less per shim
(``bench/shim_cost.md``, round 3).

Nothing outlives a rehearsal: no socket, file, thread or child process. The reaper is made but
not installed: the template must not become a child subreaper (the shims it forks are not its
children), and it handles no SIGCHLD. Its task is ``rehearsal`` in namespace ``rehearsal``,
with its socket among the shims' for a few milliseconds; should a live shim serve that very
task, the rehearsal fails (AlreadyExists) and the template does without.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile

from google.protobuf import empty_pb2

from ctrpy import ttrpc
from ctrpy.api.containerd.events import task_pb2 as task_events
from ctrpy.api.containerd.services.ttrpc.events.v1 import events_pb2
from ctrpy.api.ctrpy.shim.v1 import shim_pb2 as pb
from ctrpy.errors import CtrpyError

from . import events
from .config import ShimConfig
from .daemon import MAX_REPLY, Reply, open_log
from .reaper import Reaper
from .server import SERVICE, Listening, claim_socket, serve, serve_on, task_server
from .spare import _claimed

# More than the 8 calls after which CPython 3.11 quickens a function's bytecode.
ROUNDS = 10
NAMESPACE = "rehearsal"
TASK_ID = "rehearsal"
CALL_TIMEOUT = 5.0


async def _forwarded(request: events_pb2.ForwardRequest, context: ttrpc.Context) -> empty_pb2.Empty:
    return empty_pb2.Empty()


async def _claim(config: ShimConfig) -> tuple[bytes, int, int]:
    """Hand ourselves a claim as the template hands one to its spare: the request's JSON line
    with a descriptor, here a pipe's write end, where the reply goes. Returns the line, the
    pipe's read end and the descriptor received."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    try:
        socket.send_fds(mine, [json.dumps(config.to_dict()).encode()], [write_end])
        claim = await _claimed(theirs)
        if claim is None:
            raise ConnectionError("the rehearsal's claim did not arrive")
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
        mine.close()
        theirs.close()
    line, reply_fd = claim
    return line, read_end, reply_fd


async def _serving(stack: contextlib.AsyncExitStack, server: ttrpc.Server, path: str) -> None:
    """Serve ``server`` on a new unix socket at ``path``; ``stack`` stops it and removes the file."""
    stack.callback(_remove, path)
    await serve_on(server, path)
    stack.push_async_callback(server.shutdown)


async def _stop(life: asyncio.Future[None]) -> None:
    life.cancel()
    await asyncio.gather(life, return_exceptions=True)


def _close_unsent(report: Reply) -> None:
    """Close the reply descriptor unless the reply went (writing it closes it)."""
    if not report.sent:
        os.close(report.fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _round(state_root: str, directory: str) -> None:
    """One shim life: its sockets under ``state_root``, its bundle and ctrpyd's events socket
    in ``directory``. Whatever it opened is closed, and its socket files removed, even when
    it fails."""
    config = ShimConfig(NAMESPACE, TASK_ID, directory, os.path.join(directory, "e"), state_root, "runc",
                        os.path.join(directory, "runc"))  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        manager = ttrpc.Server()  # stands in for ctrpyd's ttrpc socket, where events go
        manager.register(events.SERVICE, {"Forward": ttrpc.Method(events_pb2.ForwardRequest, _forwarded)})
        await _serving(stack, manager, config.address)
        server, servicer = task_server()
        spare_path = os.path.join(directory, "p")
        await _serving(stack, server, spare_path)
        line, read_end, reply_fd = await _claim(config)
        stack.callback(os.close, read_end)
        report = Reply(reply_fd)
        stack.callback(_close_unsent, report)
        ShimConfig.from_dict(json.loads(line))
        os.close(open_log(config.bundle))
        claim_socket(config.socket_path)
        stack.callback(_remove, config.socket_path)
        os.rename(spare_path, config.socket_path)
        life = asyncio.ensure_future(serve(config, report, Listening(Reaper(), server, servicer)))
        stack.push_async_callback(_stop, life)
        client = ttrpc.Client(config.socket_address)
        stack.push_async_callback(client.close)
        publisher = events.Publisher(config.address, NAMESPACE)
        stack.push_async_callback(publisher.close)
        await client.call(
            SERVICE, "Connect", pb.ConnectRequest(id=TASK_ID), pb.ConnectResponse, timeout=CALL_TIMEOUT
        )
        # A Create up to its first failure (there is no config.json): the request's conversion,
        # the runtime's options, and an error answered as a ttrpc status. No process starts.
        create = pb.CreateRequest(id=TASK_ID, bundle=directory, stdout=os.devnull)
        with contextlib.suppress(CtrpyError):
            await client.call(SERVICE, "Create", create, pb.CreateResponse, timeout=CALL_TIMEOUT)
        io = task_events.TaskIO(stdout=os.devnull)
        publisher.publish(
            "/tasks/create", task_events.TaskCreate(container_id=TASK_ID, bundle=directory, io=io)
        )
        publisher.publish("/tasks/start", task_events.TaskStart(container_id=TASK_ID, pid=1))
        await publisher.flush(CALL_TIMEOUT)
        await client.call(
            SERVICE, "Shutdown", pb.ShutdownRequest(id=TASK_ID), pb.ShutdownResponse, timeout=CALL_TIMEOUT
        )
        await asyncio.wait_for(asyncio.shield(life), CALL_TIMEOUT)
        json.loads(os.read(read_end, MAX_REPLY))  # the reply serve() wrote


def rehearse(socket_dir: str, rounds: int = ROUNDS) -> None:
    """Run ``rounds`` shim lives. ``socket_dir`` is where the template's shims put their
    sockets (``<state root>/s``): the rehearsal's go there too, so their paths are no longer
    than a real shim's, and its bundle is a directory made there and removed afterwards.
    Raises what a round raises (the template then does without: a rehearsal only saves
    memory)."""
    state_root = os.path.dirname(socket_dir) if os.path.basename(socket_dir) == "s" else ""
    with tempfile.TemporaryDirectory(prefix="rehearsal-", dir=socket_dir) as directory:
        for _ in range(rounds):
            asyncio.run(_round(state_root or directory, directory))  # each shim runs its own loop
