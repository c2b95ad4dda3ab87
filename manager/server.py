"""The composition root of ctrpyd: build everything in order, serve, and unwind in reverse.

``serve(config)`` opens the metadata database, makes the stores and the event exchange, builds
the servicers on top, and serves them on the unix socket until a signal arrives; beside it, the
ttrpc socket its shims send their task events to (``[ttrpc]``, :func:`_serve_ttrpc`). Each piece is
pushed onto an ``AsyncExitStack`` as it is made, so shutdown (or a failure half-way through
start-up) closes them in reverse order. containerd: ``cmd/containerd/server/server.go``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import structlog
from google.protobuf import descriptor as pb_descriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ctrpy import ttrpc
from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.content.v1 import content_pb2, content_pb2_grpc
from ctrpy.api.containerd.services.diff.v1 import diff_pb2, diff_pb2_grpc
from ctrpy.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from ctrpy.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2, introspection_pb2_grpc
from ctrpy.api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2, namespace_pb2_grpc
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from ctrpy.api.containerd.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from ctrpy.api.containerd.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from ctrpy.api.containerd.services.version.v1 import version_pb2, version_pb2_grpc
from ctrpy.errors import CtrpyError, Unavailable
from ctrpy.snapshotter.base import Snapshotter
from ctrpy.snapshotter.native import NativeSnapshotter
from ctrpy.snapshotter.overlay import OverlaySnapshotter
from ctrpy.snapshotter.proxy import ProxySnapshotter

from . import memtrim, rootlock, sdnotify, startup, tracing
from .config import Config
from .content import ContentStore
from .diff import Limits
from .events import Exchange
from .gc import Collector, Scheduler
from .metadata.containers import ContainerStore
from .metadata.content import NamespacedContent
from .metadata.db import Database
from .metadata.images import ImageStore
from .metadata.leases import LeaseStore
from .metadata.namespaces import NamespaceStore
from .metadata.server_info import server_uuid
from .metadata.snapshots import NAMESPACE_OWNER as SNAPSHOTS_OWNER
from .metadata.snapshots import SnapshotStore
from .metrics.grpcstats import GrpcStats
from .runtime import ShimLauncher, ShimTimeouts
from .services import containers as containers_service
from .services import timeline as timeline_service
from .services.containers import ContainersServicer
from .services.content import ContentServicer
from .services.diff import DiffServicer
from .services.edge import EdgeInterceptor
from .services.events import EventsServicer
from .services.images import ImagesServicer
from .services.introspection import IntrospectionServicer, Plugin
from .services.leases import LeasesServicer
from .services.namespaces import NamespacesServicer
from .services.reflection import REFLECTION_SERVICE, LazyReflection
from .services.snapshots import SnapshotsServicer
from .services.streaming import StreamingServicer
from .services.tasks import TasksServicer
from .services.transfer import TransferServicer
from .services.ttrpc_events import SERVICE as TTRPC_EVENTS
from .services.ttrpc_events import TtrpcEventsService
from .services.version import VersionServicer
from .tasks.manager import TaskManager
from .transfer import StreamManager, Transfers, TransferSettings

log = structlog.get_logger(__name__)

# ctr sends up to 16 MiB messages; accept the same.
MAX_MESSAGE = 16 * 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 10.0
# Forward answers at once: a second is plenty for one in flight at shutdown.
TTRPC_GRACE_SECONDS = 1.0
GRPC_PLUGIN = "io.containerd.grpc.v1"
SNAPSHOTTER_PLUGIN = "io.containerd.snapshotter.v1"

class Services:
    """What ctrpyd serves: each gRPC service with the plugin entry that introspection reports."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server
        self.plugins: list[Plugin] = []
        self.names: list[str] = []

    def add(
        self,
        plugin_id: str,
        servicer: object,
        add_to_server: Callable[[Any, grpc.aio.Server], None],
        service: pb_descriptor.ServiceDescriptor,
        requires: tuple[str, ...] = ("io.containerd.metadata.v1",),
    ) -> None:
        """Serve ``servicer`` (made by the generated ``add_XServicer_to_server``) as ``plugin_id``."""
        add_to_server(servicer, self.server)
        self.names.append(service.full_name)
        self.plugins.append(Plugin(GRPC_PLUGIN, plugin_id, requires=requires))

    def add_plugin(self, plugin: Plugin) -> None:
        """Report a non-gRPC piece (a store, a snapshotter) in introspection."""
        self.plugins.append(plugin)



def _claim_socket(address: Path) -> None:
    """Remove a stale socket file; refuse when a live server answers on it."""
    if not address.exists() and not address.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(address))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        address.unlink(missing_ok=True)
    else:
        raise Unavailable(f"address {address} is in use by a running server")
    finally:
        probe.close()


@contextlib.contextmanager
def _owner_only() -> Iterator[None]:
    """Sockets bound inside the block are created owner-only: nobody else can connect before
    :func:`_open_to` gives them their owner and mode."""
    old_umask = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old_umask)


def _open_to(path: Path, owner: tuple[int, int], mode: int) -> None:
    """Give a socket made by :func:`_owner_only` its owner and mode (``[grpc]``'s)."""
    os.chown(path, *owner)
    os.chmod(path, mode)


async def _serve_ttrpc(config: Config, exchange: Exchange, stack: contextlib.AsyncExitStack) -> None:
    """Serve the shims' ttrpc socket, containerd's convention: ``[ttrpc] address`` (by default
    the gRPC socket's path + ".ttrpc"), made like the gRPC socket (a stale file replaced, a live
    server refused; created owner-only, then given its owner and the gRPC socket's mode), removed
    at shutdown. Shims forward their task events there (:mod:`.services.ttrpc_events`)."""
    server = ttrpc.Server()
    server.register(TTRPC_EVENTS, TtrpcEventsService(exchange).methods())
    path = config.ttrpc_socket
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    _claim_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _owner_only():
            sock.bind(str(path))
        stack.callback(path.unlink, missing_ok=True)
        sock.listen(socket.SOMAXCONN)
        _open_to(path, config.ttrpc_owner, config.socket_mode)
        await server.start(sock)  # the server owns the socket from here
    except BaseException:
        sock.close()
        raise
    stack.push_async_callback(server.shutdown, TTRPC_GRACE_SECONDS)  # before the file goes


async def _snapshotters(
    config: Config, db: Database, services: Services, stack: contextlib.AsyncExitStack
) -> dict[str, SnapshotStore]:
    """Open overlayfs, native and every snapshot proxy plugin, each behind its namespaced store.

    Each is recovered (interrupted commits settled, unreferenced backend snapshots removed)
    before serving, and closed when ctrpyd stops. One that cannot work here (overlayfs on a
    filesystem that cannot hold its upper directories) is reported as a skipped plugin.
    """
    snapshots = config.root / "snapshots"
    candidates: list[tuple[str, Callable[[], Snapshotter], dict[str, str]]] = [
        ("overlayfs", lambda: OverlaySnapshotter(snapshots / "overlayfs"), {"root": str(snapshots / "overlayfs")}),
        ("native", lambda: NativeSnapshotter(snapshots / "native"), {"root": str(snapshots / "native")}),
    ]
    for name, proxy in sorted(config.proxy_plugins.items()):
        if proxy.type == "snapshot":
            dial = functools.partial(ProxySnapshotter, proxy.address, name)
            candidates.append((name, dial, {"address": proxy.address}))
    stores: dict[str, SnapshotStore] = {}
    for name, open_backend, exports in candidates:
        try:
            backend = await asyncio.to_thread(open_backend)
        except (CtrpyError, OSError) as exc:
            log.warning("snapshotter not loaded", snapshotter=name, error=str(exc))
            services.add_plugin(Plugin(SNAPSHOTTER_PLUGIN, name, exports=exports, init_error=f"skip plugin: {exc}"))
            continue
        stack.callback(backend.close)
        store = SnapshotStore(db, name, backend)
        stack.push_async_callback(store.aclose)  # before the backend closes: queued removals
        try:
            await store.recover()
        except (CtrpyError, OSError) as exc:  # a proxy that is not up yet, say: serve anyway
            log.warning("snapshotter recovery failed", snapshotter=name, error=str(exc))
        services.add_plugin(Plugin(SNAPSHOTTER_PLUGIN, name, exports=exports))
        stores[name] = store
    return stores


async def _transfer(
    config: Config, db: Database, content: NamespacedContent, snapshot_stores: dict[str, SnapshotStore],
    exchange: Exchange, limits: Limits, services: Services, stack: contextlib.AsyncExitStack,
) -> Transfers:
    """Serve Transfer (registry pulls and pushes) and Streaming (its progress and credential
    streams). The registry client is built at the first transfer (see manager/transfer/lazy.py)."""
    settings = TransferSettings(config.default_snapshotter, config.transfer_config_path,
                                config.transfer_max_concurrent_downloads, config.transfer_stall_timeout,
                                config.transfer_credentials_file, config.transfer_unpack_workers)
    transfers = Transfers(db=db, content=content, snapshots=snapshot_stores, events=exchange,
                          tmp_root=config.root / "tmpmounts", limits=limits, settings=settings)
    stack.push_async_callback(transfers.aclose)
    streams = StreamManager()
    services.add("streaming", StreamingServicer(streams), streaming_pb2_grpc.add_StreamingServicer_to_server,
                 streaming_pb2.DESCRIPTOR.services_by_name["Streaming"], requires=())
    services.add("transfer", TransferServicer(transfers, streams), transfer_pb2_grpc.add_TransferServicer_to_server,
                 transfer_pb2.DESCRIPTOR.services_by_name["Transfer"],
                 requires=("io.containerd.content.v1", "io.containerd.metadata.v1"))
    return transfers


def _cri(config: Config, db: Database, content: NamespacedContent, transfers: Transfers, exchange: Exchange,
         gc: Scheduler, services: Services, stack: contextlib.AsyncExitStack,
         ) -> Callable[[TaskManager, ContainerStore, dict[str, SnapshotStore]], Coroutine[Any, Any, None]] | None:
    """Serve Kubernetes' CRI (runtime.v1 RuntimeService and ImageService) on the same socket, when
    ``[cri] enabled``: images through the same stores and puller as Transfer, in ``k8s.io``.
    Returns what attaches the pod sandboxes once the task manager has recovered its shims."""
    if not config.cri.enabled:
        return None
    # Registered now, imported and built at the first call (or now, when the CRI left state on
    # disk): see manager/cri/lazy.py. It keeps about 5 MiB out of a daemon no kubelet uses.
    from .cri.lazy import IMAGE_SERVICE, RUNTIME_SERVICE, CriParts, LazyCri

    cri = LazyCri(CriParts(config, db, content, transfers, exchange, gc, stack))
    services.server.add_generic_rpc_handlers(cri.handlers())
    # One plugin (cri) serves both services, as in containerd.
    services.names += [RUNTIME_SERVICE, IMAGE_SERVICE]
    services.add_plugin(Plugin(GRPC_PLUGIN, "cri", requires=("io.containerd.event.v1", "io.containerd.service.v1")))
    return cri.attach


def _host_arch() -> str:
    """The machine's architecture in Go's spelling, as containerd reports platforms.

    (Not ctrpy.images.platforms: importing the client-side image package costs the daemon
    about 2 MiB of resident memory for one function.)"""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(machine, machine)


def _prepare_directories(config: Config) -> None:
    config.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    config.state.mkdir(mode=0o711, parents=True, exist_ok=True)
    config.address.parent.mkdir(mode=0o711, parents=True, exist_ok=True)


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Run ctrpyd until SIGTERM or SIGINT (a second one forces an immediate stop)."""
    _prepare_directories(config)
    notifier = sdnotify.Notifier.from_environment()  # before any child: see manager/sdnotify.py
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(rootlock.holding_root(config.root))
        db = Database(config.root / "meta.db")
        stack.callback(db.close)
        namespace_store = NamespaceStore(db)
        exchange = Exchange()
        gc_scheduler = Scheduler(config.gc)  # started once the stores it collects exist
        uuid = await db.run(server_uuid, db)

        if tracing.setup(config.tracing) is not None:  # [tracing]: see manager/tracing
            stack.callback(tracing.shutdown)  # late: after the server and the shims' clients
        # [metrics] address: gRPC calls are counted from the first (see manager/metrics).
        grpc_stats = GrpcStats(config.metrics.grpc_histogram) if config.metrics.address else None
        server = grpc.aio.server(
            interceptors=[*([grpc_stats.interceptor()] if grpc_stats else []), *tracing.server_interceptors(),
                          EdgeInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
            ],
        )
        services = Services(server)
        services.add_plugin(Plugin("io.containerd.event.v1", "exchange"))
        services.add_plugin(
            Plugin("io.containerd.metadata.v1", "sqlite", exports={
                "path": str(config.root / "meta.db"), "policy": config.content_sharing_policy})
        )
        services.add("version", VersionServicer(), version_pb2_grpc.add_VersionServicer_to_server,
                     version_pb2.DESCRIPTOR.services_by_name["Version"], requires=())
        services.add("namespaces", NamespacesServicer(db, namespace_store, exchange),
                     namespace_pb2_grpc.add_NamespacesServicer_to_server,
                     namespace_pb2.DESCRIPTOR.services_by_name["Namespaces"])
        container_store = ContainerStore(db, containers_service.encode)
        services.add("containers", ContainersServicer(db, container_store, exchange),
                     containers_service.add_to_server,
                     containers_pb2.DESCRIPTOR.services_by_name["Containers"])
        services.add("images", ImagesServicer(db, ImageStore(db), exchange, gc_scheduler),
                     images_pb2_grpc.add_ImagesServicer_to_server,
                     images_pb2.DESCRIPTOR.services_by_name["Images"])
        services.add("leases", LeasesServicer(db, LeaseStore(db), gc_scheduler), leases_pb2_grpc.add_LeasesServicer_to_server,
                     leases_pb2.DESCRIPTOR.services_by_name["Leases"])
        content = NamespacedContent(db, ContentStore(config.root), config.content_sharing_policy)
        namespace_store.deleted_hooks.append(content.forget_ingests)
        await asyncio.to_thread(startup.clean, content.store, config.root / "tmpmounts")  # after a crash
        services.add_plugin(
            Plugin("io.containerd.content.v1", "content", exports={"root": str(content.store.path)})
        )
        services.add("content", ContentServicer(content, exchange), content_pb2_grpc.add_ContentServicer_to_server,
                     content_pb2.DESCRIPTOR.services_by_name["Content"],
                     requires=("io.containerd.content.v1", "io.containerd.metadata.v1"))
        services.add_plugin(Plugin("io.containerd.differ.v1", "walking", requires=("io.containerd.content.v1",)))
        limits = Limits(config.diff_max_uncompressed_bytes or None, config.diff_max_entries or None)
        services.add("diff", DiffServicer(content, config.root / "tmpmounts", limits),
                     diff_pb2_grpc.add_DiffServicer_to_server,
                     diff_pb2.DESCRIPTOR.services_by_name["Diff"], requires=("io.containerd.differ.v1",))
        services.add("events", EventsServicer(exchange), events_pb2_grpc.add_EventsServicer_to_server,
                     events_pb2.DESCRIPTOR.services_by_name["Events"], requires=("io.containerd.event.v1",))
        namespace_store.extra_owners.append(SNAPSHOTS_OWNER)
        snapshot_stores = await _snapshotters(config, db, services, stack)
        gc_scheduler.start(Collector(db, content, snapshot_stores, exchange))
        stack.push_async_callback(gc_scheduler.close)
        services.add_plugin(Plugin("io.containerd.gc.v1", "scheduler", requires=("io.containerd.metadata.v1",),
                                   exports=gc_scheduler.exports))
        services.add("snapshots", SnapshotsServicer(snapshot_stores, exchange),
                     snapshots_pb2_grpc.add_SnapshotsServicer_to_server,
                     snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"],
                     requires=(SNAPSHOTTER_PLUGIN, "io.containerd.metadata.v1"))
        transfers = await _transfer(config, db, content, snapshot_stores, exchange, limits, services, stack)
        attach_cri = _cri(config, db, content, transfers, exchange, gc_scheduler, services, stack)
        server.add_generic_rpc_handlers([timeline_service.handler()])  # ctrpy's own: services/timeline.py
        services.add_plugin(Plugin("io.containerd.runtime.v2", "task", platforms=(("linux", _host_arch()),),
                                   exports={"state": str(config.state / "tasks")}))
        launcher = ShimLauncher(
            config.state, str(config.ttrpc_socket), use_template=config.shim_template, spare=config.shim_spare,
            timeouts=ShimTimeouts(config.shim_call_timeout, config.shim_state_timeout),
        )  # fmt: skip
        await launcher.start(wait=False)  # the template comes up while the tasks are taken back
        stack.push_async_callback(launcher.close)
        task_manager = TaskManager(config.state, launcher, exchange, dict(config.runtimes),
                                   shim_per_pod=config.cri.enabled and config.cri.shim_per_pod)
        await task_manager.recover()
        stack.push_async_callback(task_manager.close)  # closed after what the CRI attaches below
        if attach_cri is not None:
            await attach_cri(task_manager, container_store, snapshot_stores)
        services.add("tasks", TasksServicer(db, container_store, task_manager),
                     tasks_pb2_grpc.add_TasksServicer_to_server, tasks_pb2.DESCRIPTOR.services_by_name["Tasks"],
                     requires=("io.containerd.runtime.v2", "io.containerd.metadata.v1"))
        # Introspection last: it reports everything added above, itself and health included.
        introspection = IntrospectionServicer([], uuid)
        services.add("introspection", introspection, introspection_pb2_grpc.add_IntrospectionServicer_to_server,
                     introspection_pb2.DESCRIPTOR.services_by_name["Introspection"])
        health_servicer = health.aio.HealthServicer()
        services.add("healthcheck", health_servicer, health_pb2_grpc.add_HealthServicer_to_server,
                     health_pb2.DESCRIPTOR.services_by_name["Health"], requires=())
        introspection.plugins = services.plugins
        server.add_generic_rpc_handlers([LazyReflection([*services.names, REFLECTION_SERVICE])])  # at first call
        if grpc_stats is not None:  # imported only then: prometheus-client stays out of other daemons
            from .metrics.service import serve_metrics

            await serve_metrics(config, grpc_stats, [*services.names, REFLECTION_SERVICE], task_manager, db,
                                exchange, gc_scheduler, content.store.path / "blobs", snapshot_stores, stack)

        # Before anyone can make anything: the start-up collection, if not run yet, cannot
        # take what a client makes without a lease in its first moments (see gc/scheduler.py).
        await gc_scheduler.startup_collection()
        _claim_socket(config.address)
        await _serve_ttrpc(config, exchange, stack)
        with _owner_only():  # the socket is created owner-only, then opened to the group
            server.add_insecure_port(f"unix:{config.address}")
            await server.start()
        stack.callback(config.address.unlink, missing_ok=True)
        _open_to(config.address, (config.socket_uid, config.socket_gid), config.socket_mode)
        for name in services.names:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)

        stopping = asyncio.Event()
        signals_seen = 0
        forced: list[asyncio.Task[None]] = []

        def on_signal(signum: int) -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                log.info("shutting down: draining calls", signal=signal.Signals(signum).name)
                stopping.set()
            else:
                log.warning("second signal: stopping now", signal=signal.Signals(signum).name)
                forced.append(loop.create_task(server.stop(0)))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
            stack.callback(loop.remove_signal_handler, signum)

        log.info("ctrpyd serving", address=str(config.address), ttrpc=str(config.ttrpc_socket), root=str(config.root),
                 state=str(config.state))
        notifier.send(f"READY=1\nSTATUS=serving on {config.address}")
        memtrim.trim()  # what start-up freed goes back to the kernel (see manager/memtrim.py)
        if ready is not None:
            ready.set()
        await stopping.wait()
        notifier.send("STOPPING=1")
        await health_servicer.enter_graceful_shutdown()
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        log.info("ctrpyd stopped")
