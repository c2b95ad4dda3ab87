"""The ``/v1/metrics`` endpoint: a small HTTP/1.1 server on the event loop, the work on threads.

containerd serves its metrics on ``[metrics] address`` (TCP, plain HTTP) at ``/v1/metrics``,
answering 404 elsewhere. Here a scrape:

1. takes, on the event loop, copies of the gRPC counters, the task list and the daemon's
   figures (microseconds; no shim is asked, no file read);
2. looks up the runtime name of tasks it has not seen before (one metadata query, only then);
3. reads every container's cgroup and renders the text on the metrics thread
   (:mod:`.render`), one scrape at a time.

Each connection gets one answer and is closed (``Connection: close``), which every Prometheus
scraper handles; requests are bounded in size and time so that a client that sends nothing
cannot hold anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from ctrpy.errors import Unavailable

from ..config import Config, split_address
from ..events import Exchange
from ..gc import Scheduler
from ..metadata.db import Database
from ..tasks.manager import Task, TaskManager
from . import cgroups, render
from .daemon import DaemonFigures, DiskSampler, GcFigures, TaskStates, count_states
from .grpcstats import GrpcStats, MethodStats

log = structlog.get_logger(__name__)

PATH = "/v1/metrics"
HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT = 10.0
FIRST_DISK_WAIT = 2.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


class CgroupPaths:
    """Each task's cgroup path, read once from its bundle's ``config.json`` (``linux.cgroupsPath``,
    as runc's cgroupfs driver uses it), else from ``/proc/<pid>/cgroup``. Used on the metrics
    thread only."""

    def __init__(self) -> None:
        self._paths: dict[tuple[Path, int], str | None] = {}

    def resolve(self, bundle: Path, pid: int) -> str | None:
        key = (bundle, pid)
        if key not in self._paths:
            path = None
            try:
                spec = json.loads((bundle / "config.json").read_bytes())
                path = cgroups.cgroup_from_spec(spec) if isinstance(spec, dict) else None
            except (OSError, ValueError):
                pass
            if path is None and pid > 0:
                path = cgroups.cgroup_of_pid(pid)
            self._paths[key] = path
        return self._paths[key]

    def keep(self, keys: Iterable[tuple[Path, int]]) -> None:
        """Forget the tasks that are gone."""
        wanted = set(keys)
        for key in [key for key in self._paths if key not in wanted]:
            del self._paths[key]


class MetricsService:
    """Serves ``/v1/metrics`` on ``address`` while open."""

    def __init__(self, address: str, stats: GrpcStats, tasks: TaskManager, db: Database, exchange: Exchange,
                 gc: Scheduler, blobs: Path, snapshot_roots: dict[str, Path]) -> None:
        self.address = address
        self.stats = stats
        self.tasks = tasks
        self.db = db
        self.exchange = exchange
        self.gc = gc
        self.states = TaskStates()
        # One thread renders (scrapes queue behind each other); another walks the stores.
        self._render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics")
        self._walk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-disk")
        self.disk = DiskSampler(blobs, snapshot_roots, self._walk)
        self.where = cgroups.Hierarchies.find()
        self._paths = CgroupPaths()
        self._runtimes: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        host, port = split_address(self.address)
        try:
            self._server = await asyncio.start_server(self._serve_client, host or None, port, reuse_address=True,
                                                      limit=HEAD_LIMIT)
        except OSError as exc:
            raise Unavailable(f"metrics address {self.address}: {exc.strerror or exc}") from None
        self.exchange.observers.append(self.states.observe)
        log.info("serving metrics", address=self.address, path=PATH, cgroup_v1=self.where.usable and self.where.unified is None,
                 cgroup_v2=self.where.unified is not None)

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.exchange.observers.remove(self.states.observe)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._render.shutdown(wait=False, cancel_futures=True)
        self._walk.shutdown(wait=False, cancel_futures=True)

    # -- one scrape ---------------------------------------------------------------------------

    def _figures(self, tasks: Sequence[Task]) -> DaemonFigures:
        gc = self.gc
        live = [task for task in tasks if task.client is not None]
        self.states.keep({(task.namespace, task.id) for task in tasks})
        return DaemonFigures(
            tasks=count_states([((task.namespace, task.id), task.client is not None) for task in tasks], self.states),
            shims=len({id(task.client) for task in live}),
            disk=self.disk.last,
            gc=GcFigures(gc.collections, gc.failures, gc.duration_total, gc.pause_total, gc.removed_total),
            events_dropped=self.exchange.dropped,
            subscribers=self.exchange.subscriber_count,
        )

    async def _runtime_names(self, keys: set[tuple[str, str]]) -> None:
        """Learn the runtime names of containers not seen before (one query), forget old ones."""
        for key in [key for key in self._runtimes if key not in keys]:
            del self._runtimes[key]
        if keys <= self._runtimes.keys():
            return

        def query() -> list[tuple[str, str, str]]:
            rows = self.db.conn.execute("SELECT namespace, id, runtime_name FROM containers")
            return [(str(namespace), str(name), str(runtime)) for namespace, name, runtime in rows]

        try:
            rows = await self.db.run(query)
        except (sqlite3.Error, RuntimeError) as exc:
            log.warning("metrics: reading runtime names failed", error=str(exc))
            return
        for namespace, container_id, runtime in rows:
            if (namespace, container_id) in keys:
                self._runtimes[(namespace, container_id)] = runtime
        for key in keys - self._runtimes.keys():  # a task whose container record is gone
            self._runtimes[key] = ""

    async def scrape(self) -> bytes:
        """The exposition of this moment (scrapes run one at a time)."""
        async with self._lock:
            self.disk.current()  # a walk of the stores starts when the last sample is old
            await self.disk.first(FIRST_DISK_WAIT)  # the first scrape waits a little for it
            tasks = self.tasks.all()
            live = [task for task in tasks if task.client is not None]
            await self._runtime_names({(task.namespace, task.id) for task in live})
            refs = [(task.namespace, task.id, self._runtimes.get((task.namespace, task.id), ""),
                     task.bundle.path, task.pid) for task in live]
            figures = self._figures(tasks)
            grpc = self.stats.snapshot()
            return await asyncio.get_running_loop().run_in_executor(
                self._render, self._render_now, grpc, refs, figures)

    def _render_now(self, grpc: list[MethodStats], refs: list[tuple[str, str, str, Path, int]],
                    figures: DaemonFigures) -> bytes:
        self._paths.keep((bundle, pid) for _, _, _, bundle, pid in refs)
        containers = []
        for namespace, container_id, runtime, bundle, pid in refs:
            path = self._paths.resolve(bundle, pid)
            if path is not None:
                containers.append(render.Container(namespace, container_id, runtime, path))
        return render.render(render.Scrape(grpc, self.stats.histogram, containers, figures), self.where)

    # -- HTTP -----------------------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                await self._answer(writer, 400, b"bad request\n")
                return
            method, target = parts[0], parts[1]
            if target.split("?", 1)[0] != PATH:
                await self._answer(writer, 404, b"404 page not found\n")
            elif method not in ("GET", "HEAD"):
                await self._answer(writer, 405, b"method not allowed\n")
            else:
                try:
                    body = await self.scrape()
                except Exception as exc:  # a scrape must not take the daemon down; say what failed
                    log.exception("metrics scrape failed")
                    await self._answer(writer, 500, f"scrape failed: {exc}\n".encode())
                    return
                await self._answer(writer, 200, body, render.CONTENT_TYPE, head_only=method == "HEAD")
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes,
                      content_type: str = "text/plain; charset=utf-8", head_only: bool = False) -> None:
        head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("ascii") + (b"" if head_only else body))
        await writer.drain()


async def serve_metrics(config: Config, stats: GrpcStats, service_names: Iterable[str], tasks: TaskManager,
                        db: Database, exchange: Exchange, gc: Scheduler, blobs: Path,
                        snapshotters: Iterable[str], stack: contextlib.AsyncExitStack) -> MetricsService:
    """Serve ``/v1/metrics`` on ``[metrics] address`` until ``stack`` closes; Unavailable when
    the address cannot be listened on (containerd refuses to start then, too). ``snapshotters``
    are the loaded ones; those with a directory of ctrpyd's own (not proxies) are measured."""
    stats.preregister(service_names)
    root = config.root / "snapshots"
    own = {name: root / name for name in snapshotters if name in ("overlayfs", "native")}
    service = MetricsService(config.metrics.address, stats, tasks, db, exchange, gc, blobs, own)
    await service.start()
    stack.push_async_callback(service.close)
    return service
