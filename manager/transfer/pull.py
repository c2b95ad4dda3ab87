"""Server-side pulls: a registry image into the content store, unpacked, then named.

One :meth:`Puller.pull` does what containerd's transfer service does for an ``OCIRegistry`` ->
``ImageStore`` transfer:

1. resolve the reference and fetch every index, manifest and config for the wanted platforms
   (:func:`ctrpy.manager.registry.plan`; they stay in memory, they are small);
2. download the layers, at most ``max_concurrent_downloads`` at once, each through an ingest
   named after its digest so that a pull interrupted half-way resumes from the ingest's offset
   (HTTP Range) instead of starting over; every blob is verified by digest before it is
   committed (a resumed one by the writer, over all its bytes); blobs the namespace holds are
   not fetched again;
3. unpack while downloading: each manifest to unpack has its own task that applies a layer as
   soon as it and the layers below it are in, into a snapshot named by its chain id (an
   existing one is reused, as containerd's unpacker does);
4. write the documents, labelled for containerd's garbage collector (an index keeps its
   manifests, a manifest its config and layers, a config its top snapshot per snapshotter),
   and only then create (or update) the image record.

Everything runs under a lease (the caller's, or one made for the pull with a one-hour
``containerd.io/gc.expire``): a pull that fails or is cancelled leaves no image record, and what
it wrote stays collectable; a retry within the hour finds its partial ingests and resumes them.
A successful pull deletes the lease it made: the image then keeps what it needs.

Two pulls of one blob in a namespace at the same time share one download: the second waits for
the first and then finds the blob (or, if the first failed, downloads it itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from ctrpy import namespaces
from ctrpy.api.containerd.events import image_pb2 as events_pb2
from ctrpy.errors import AlreadyExists, CtrpyError, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.images import mediatypes
from ctrpy.images import platforms as platform_matchers
from ctrpy.images.model import (
    Descriptor,
    ImageConfig,
    Manifest,
    Platform,
    chain_id,
    parse_config,
    parse_index,
    sha256_digest,
)
from ctrpy.manager import tracing
from ctrpy.manager.diff import Limits, apply_to_mounts
from ctrpy.manager.diff.apply import AppliedLayer
from ctrpy.manager.diff.pool import UnpackPool
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.content import UNCOMPRESSED_LABEL, BlobSink, NamespacedContent
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.images import ImageStore
from ctrpy.manager.metadata.leases import LeaseStore
from ctrpy.manager.metadata.snapshots import SnapshotStore
from ctrpy.manager.registry import (
    CredentialSource,
    DigestMismatch,
    ImagePlan,
    ImageRef,
    Remote,
    Session,
    parse,
    plan,
)
from ctrpy.manager.registry.debug import HttpTap
from ctrpy.manager.registry.manifests import limit_entries, select_each
from ctrpy.mount import Mount
from ctrpy.records import Descriptor as RecordDescriptor
from ctrpy.records import Image, LeaseResource, freeze

log = structlog.get_logger(__name__)

GC_EXPIRE = "containerd.io/gc.expire"
GC_REF_CONTENT = "containerd.io/gc.ref.content"
GC_REF_SNAPSHOT = "containerd.io/gc.ref.snapshot."
GC_BREF_IMAGE = "containerd.io/gc.bref.image"
DISTRIBUTION_SOURCE = "containerd.io/distribution.source."
#: How long the lease of a failed pull keeps its partial downloads for a retry to resume.
LEASE_EXPIRY = timedelta(hours=1)
#: Bytes gathered before one append to an ingest, and between two progress events of a blob.
WRITE_CHUNK = 1 << 20
PROGRESS_STEP = 1 << 20


@dataclass(frozen=True)
class UnpackTarget:
    """Unpack the manifest for ``platform`` into ``snapshotter`` ("" for the daemon's default)."""

    platform: Platform
    snapshotter: str = ""


@dataclass(frozen=True)
class ExtraReference:
    """One more name for a pulled image (containerd's ``ImageReference``). On a pull only
    complete names are stored: ``name``, or ``name@<digest>`` with ``add_digest``; a prefix
    without ``add_digest`` names nothing (it is for imports, where the archive supplies the
    rest). ``allow_overwrite`` and ``skip_named_digest`` matter to imports only."""

    name: str
    is_prefix: bool = False
    allow_overwrite: bool = False
    add_digest: bool = False
    skip_named_digest: bool = False


@dataclass(frozen=True)
class PullRequest:
    """What to pull and how. ``platforms`` empty means every platform of an index;
    ``manifest_limit`` (0: none) bounds the manifests taken from an index; ``headers`` go with
    every registry request; ``tap`` dumps them (``http_debug``)."""

    reference: str
    name: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    platforms: tuple[Platform, ...] = ()
    unpacks: tuple[UnpackTarget, ...] = ()
    all_metadata: bool = False
    manifest_limit: int = 0
    extra_references: tuple[ExtraReference, ...] = ()
    host_dir: str = ""
    plain_http: bool = False
    credentials: CredentialSource | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    tap: HttpTap | None = None


#: ``progress(event, name, done, total, descriptor)``: containerd's Progress message fields.
ProgressFn = Callable[[str, str, int, int, Descriptor | None], None]


def _no_progress(event: str, name: str, done: int, total: int, desc: Descriptor | None) -> None:
    pass


def _unique() -> str:
    return f"{time.time_ns() % 1_000_000_000}-{secrets.token_urlsafe(6)}"


@dataclass
class _Job:
    """One pull in progress."""

    namespace: str
    lease: str
    ref: ImageRef
    remote: Remote
    progress: ProgressFn
    semaphore: asyncio.Semaphore
    source_labels: dict[str, str]
    layers: dict[str, asyncio.Future[None]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Unpack:
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]
    snapshotter: str


class Puller:
    """Pulls images for the Transfer service. One per daemon (it holds the shared downloads)."""

    def __init__(
        self,
        *,
        db: Database,
        content: NamespacedContent,
        images: ImageStore,
        leases: LeaseStore,
        snapshots: Mapping[str, SnapshotStore],
        session: Session,
        events: Exchange,
        tmp_root: Path,
        limits: Limits,
        default_snapshotter: str,
        config_path: str = "",
        max_concurrent_downloads: int = 3,
        unpack_pool: UnpackPool | None = None,
    ) -> None:
        self.db = db
        self.content = content
        self.images = images
        self.leases = leases
        self.snapshots = snapshots
        self.session = session
        self.events = events
        self.tmp_root = tmp_root
        self.limits = limits
        self.default_snapshotter = default_snapshotter
        self.config_path = config_path
        self.max_concurrent_downloads = max(1, max_concurrent_downloads)
        #: Unpacks run in worker processes when there is a pool (in threads otherwise): see
        #: :mod:`ctrpy.manager.diff.pool` for why.
        self.unpack_pool = unpack_pool
        #: Downloads in flight by (namespace, digest); set when they end, however they end.
        self._downloads: dict[tuple[str, str], asyncio.Future[None]] = {}

    async def pull(self, request: PullRequest, progress: ProgressFn = _no_progress) -> Image:
        """Pull ``request`` into the current namespace; return the image record written (the
        first of them, when extra references made more)."""
        return (await self.pull_all(request, progress))[0]

    @tracing.traced("image pull")
    async def pull_all(self, request: PullRequest, progress: ProgressFn = _no_progress) -> list[Image]:
        """Pull ``request`` into the current namespace; return every image record written: its
        name, then its extra references."""
        namespace = namespaces.require()
        ref = parse(request.reference)
        remote = _LocalFirst(self.content, self.session, config_path=request.host_dir or self.config_path or None,
                             plain_http=request.plain_http, credentials=request.credentials,
                             headers=request.headers, tap=request.tap)
        own_lease = namespaces.current_lease.get() is None
        lease = await self._lease() if own_lease else str(namespaces.current_lease.get())
        token = namespaces.current_lease.set(lease)
        try:
            job = _Job(namespace, lease, ref, remote, progress, asyncio.Semaphore(self.max_concurrent_downloads),
                       {DISTRIBUTION_SOURCE + ref.host: ref.repository})
            images = await self._pull(job, request)
        finally:
            namespaces.current_lease.reset(token)
        if own_lease:
            await self.db.run(self._delete_lease, lease)
        return images

    async def _lease(self) -> str:
        expire = (datetime.now(UTC) + LEASE_EXPIRY).strftime("%Y-%m-%dT%H:%M:%SZ")
        lease_id = f"transfer-{_unique()}"
        await self.db.run(self.leases.create, lease_id, {GC_EXPIRE: expire})
        return lease_id

    def _delete_lease(self, lease_id: str) -> None:
        with contextlib.suppress(NotFound):
            self.leases.delete(lease_id)

    async def _pull(self, job: _Job, request: PullRequest) -> list[Image]:
        if self.unpack_pool is not None:
            self.unpack_pool.warm()  # a worker starts while the manifests and first layers arrive
        job.progress("resolving", str(job.ref), 0, 0, None)
        resolved = await job.remote.resolve(job.ref)
        job.progress("resolved", str(job.ref), 0, 0, resolved.descriptor)
        matcher = _matcher(request.platforms)
        limit = request.manifest_limit
        if request.all_metadata:
            # With all_metadata (ctr 2.x asks for it), every platform's manifest and config are
            # fetched (at most manifest_limit of an index, the wanted platforms first), and
            # layers only for the best manifest of each wanted platform.
            image = await plan(job.remote, resolved, None,
                               choose=lambda entries: limit_entries(entries, matcher, limit))
            wanted = _wanted(image, request.platforms)
        else:
            image = await plan(job.remote, resolved, matcher,
                               choose=lambda entries: select_each(entries, request.platforms, limit))
            wanted = list(image.manifests)
        unpacks = self._unpacks(image, wanted, request.unpacks)
        layers = _unique_layers(wanted)
        for layer in layers:
            job.layers[layer.digest] = asyncio.get_running_loop().create_future()
        work: list[Coroutine[Any, Any, Any]] = [self._layer(job, layer) for layer in layers]
        work += [self._unpack(job, target) for target in unpacks]
        results = await _all_or_nothing(work)
        tops: dict[str, dict[str, str]] = {}  # config digest -> snapshotter -> top chain id
        for target, top in zip(unpacks, results[len(results) - len(unpacks):], strict=True):
            tops.setdefault(target.config.digest, {})[target.snapshotter] = str(top)
        await self._write_documents(job, image, tops)
        return await self._store_images(request, job.ref, image.root)

    # -- planning -----------------------------------------------------------------------------

    def _unpacks(self, image: ImagePlan, fetched: Sequence[tuple[Descriptor, Manifest]],
                 targets: Sequence[UnpackTarget]) -> list[_Unpack]:
        """Which manifests to unpack where: for each target the best of the ``fetched``
        manifests for its platform (none: nothing to unpack for it). InvalidArgument for an
        unknown snapshotter."""
        out: list[_Unpack] = []
        platform_of = {desc.digest: platform for (desc, _), platform in zip(image.manifests, image.platforms,
                                                                            strict=True)}
        for target in targets:
            snapshotter = target.snapshotter or self.default_snapshotter
            if snapshotter not in self.snapshots:
                raise InvalidArgument(f"snapshotter {snapshotter!r} is not available")
            matcher = platform_matchers.only(target.platform)
            fitting = [(desc, manifest) for desc, manifest in fetched if matcher.match(platform_of[desc.digest])]
            if not fitting:
                continue
            # The best of them for this target (several platforms fetched may fit it: amd64, 386).
            ranked = platform_matchers.best_first(
                matcher, [dataclasses.replace(desc, platform=platform_of[desc.digest]) for desc, _ in fitting])
            desc, manifest = next(item for item in fitting if item[0].digest == ranked[0].digest)
            config = _config(image, manifest)
            if len(config.diff_ids) != len(manifest.layers):
                raise InvalidArgument(
                    f"{image.ref}: mismatched image rootfs and manifest layers "
                    f"({len(config.diff_ids)} diff_ids, {len(manifest.layers)} layers)")
            item = _Unpack(desc, manifest.config, tuple(manifest.layers), tuple(config.diff_ids), snapshotter)
            if item not in out:
                out.append(item)
        return out

    # -- layers -------------------------------------------------------------------------------

    async def _layer(self, job: _Job, desc: Descriptor) -> None:
        """Make sure the namespace holds layer ``desc`` (in the job's lease), sharing a download
        in flight; then tell the unpackers waiting for it."""
        key = (job.namespace, desc.digest)
        try:
            while (shared := self._downloads.get(key)) is not None:
                job.progress("waiting", desc.digest, 0, desc.size, desc)
                await shared  # never fails: set when the other download ends, however it ends
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._downloads[key] = done
            try:
                if await self._held(job, desc.digest) or await self._linked(job, desc):
                    job.progress("already exists", desc.digest, desc.size, desc.size, desc)
                else:
                    async with job.semaphore:
                        await self._download(job, desc)
            finally:
                del self._downloads[key]
                done.set_result(None)
        except BaseException as error:
            waiter = job.layers[desc.digest]
            if not waiter.done():
                if isinstance(error, Exception):
                    waiter.set_exception(error)
                    waiter.exception()  # retrieved: the pull reports the first failure itself
                else:
                    waiter.cancel()
            raise
        job.layers[desc.digest].set_result(None)

    async def _held(self, job: _Job, digest: str) -> bool:
        """Whether the namespace holds ``digest``; if so, the job's lease holds it too."""
        try:
            await self.db.run(self.content.info, digest)
        except NotFound:
            return False
        try:
            await self.db.run(self.leases.add_resource, job.lease, LeaseResource(digest, "content"))
        except NotFound:
            return False  # deleted in between (or the lease is gone): fetch it
        return True

    async def _linked(self, job: _Job, desc: Descriptor) -> bool:
        """Whether the blob ``desc``, stored for another namespace, could be linked into this
        one (in the job's lease, with the source labels) without its bytes, as a Write naming
        it would be under the daemon's content sharing policy."""
        return await self.db.run(self.content.link_stored, desc.digest, desc.size, job.source_labels)

    async def _download(self, job: _Job, desc: Descriptor) -> None:
        """Fetch ``desc`` into an ingest named after it (resuming one left by an earlier try),
        verify it and commit it with the distribution source label. A failure keeps what was
        received in the ingest for the next try, unless the bytes were wrong."""
        ref = f"pull-{desc.digest}"
        sink = await asyncio.to_thread(self.content.new_blob, ref, resume=True)
        pending: list[bytes] = []  # received, not yet appended (joined once: no growing buffer)
        held = 0
        keep = True
        try:
            offset = await asyncio.to_thread(lambda: sink.offset)
            if offset > desc.size:  # not this blob's bytes: start over
                await asyncio.to_thread(sink.close)
                sink = await asyncio.to_thread(self.content.new_blob, ref)
                offset = 0
            if offset:
                log.info("resuming download", digest=desc.digest, offset=offset, size=desc.size)
            job.progress("downloading", desc.digest, offset, desc.size, desc)
            position = reported = offset
            if offset < desc.size or desc.size == 0:
                # The commit verifies the digest over every byte (resumed or not): no second hash.
                async for chunk in job.remote.fetch_blob(job.ref, desc, offset, verify=False):
                    pending.append(chunk)
                    held += len(chunk)
                    position += len(chunk)
                    if held >= WRITE_CHUNK:
                        await asyncio.to_thread(sink.write, b"".join(pending))
                        pending.clear()
                        held = 0
                    if position - reported >= PROGRESS_STEP:
                        reported = position
                        job.progress("downloading", desc.digest, position, desc.size, desc)
            await asyncio.to_thread(sink.write, b"".join(pending))
            pending.clear()
            try:
                await asyncio.to_thread(sink.commit, job.source_labels, desc.digest)
            except FailedPrecondition as error:
                raise DigestMismatch(f"{job.ref.name}: blob {desc.digest}: {error.message}") from None
            job.progress("complete", desc.digest, desc.size, desc.size, desc)
        except DigestMismatch:
            keep = False
            raise
        finally:
            await asyncio.shield(self._release(sink, ref, b"".join(pending), keep))

    async def _release(self, sink: BlobSink, ref: str, pending: bytes, keep: bool) -> None:
        """Close the ingest of an ended download: with what is still in memory appended (for a
        resume), or aborted when its bytes must not be resumed."""
        def close() -> None:
            if keep and not sink.closed:
                with contextlib.suppress(CtrpyError, OSError):
                    sink.write(pending)
                    sink.flush()
            sink.close()
            if not keep:
                with contextlib.suppress(NotFound):
                    self.content.abort(ref)

        await asyncio.to_thread(close)

    # -- unpacking ----------------------------------------------------------------------------

    async def _unpack(self, job: _Job, target: _Unpack) -> str:
        """Apply the layers of ``target`` bottom up as they arrive; return the top chain id."""
        store = self.snapshots[target.snapshotter]
        applied: list[str] = []
        for layer, diff_id in zip(target.layers, target.diff_ids, strict=True):
            parent = chain_id(applied)
            applied.append(diff_id)
            chain = chain_id(applied)
            await job.layers[layer.digest]
            if await self._snapshot_held(job, store, chain):
                continue
            job.progress("extracting", layer.digest, 0, layer.size, layer)
            if await self._apply(job, store, layer, diff_id, parent, chain):
                await self.db.run(self.content.update, layer.digest, {UNCOMPRESSED_LABEL: diff_id},
                                  [f"labels.{UNCOMPRESSED_LABEL}"])
            job.progress("extracted", layer.digest, layer.size, layer.size, layer)
        return chain_id(applied)

    async def _snapshot_held(self, job: _Job, store: SnapshotStore, chain: str) -> bool:
        """Whether snapshot ``chain`` exists; if so, the job's lease holds it too."""
        try:
            await store.stat(chain)
        except NotFound:
            return False
        resource = LeaseResource(chain, f"snapshots/{store.name}")
        try:
            await self.db.run(self.leases.add_resource, job.lease, resource)
        except NotFound:
            return False
        return True

    async def _apply(self, job: _Job, store: SnapshotStore, layer: Descriptor, diff_id: str, parent: str,
                     chain: str) -> bool:
        """Unpack one layer into snapshot ``chain`` on ``parent``; False when another unpack
        committed that chain first (theirs is then used)."""
        while True:
            key = f"extract-{_unique()} {chain}"
            try:
                mounts = await store.prepare(key, parent)
                break
            except AlreadyExists:
                continue
        try:
            try:
                if self.unpack_pool is not None:
                    blob = await asyncio.to_thread(self.content.blob_path, layer.digest)
                    result = await self.unpack_pool.apply(blob, layer.media_type, mounts,
                                                          tmp_root=self.tmp_root, limits=self.limits)
                else:
                    result = await asyncio.to_thread(self._apply_blob, layer, mounts)
            except CtrpyError as error:
                raise _in_context(error, f"{job.ref}: extracting layer {layer.digest}") from None
            if result.digest != diff_id:
                raise FailedPrecondition(
                    f"wrong diff id calculated on extraction {result.digest!r} (layer {layer.digest}, "
                    f"config says {diff_id})")
            await store.commit(chain, key)
        except AlreadyExists:
            await _remove_quietly(store, key)
            return False
        except BaseException:
            await asyncio.shield(_remove_quietly(store, key))
            raise
        return True

    def _apply_blob(self, layer: Descriptor, mounts: Sequence[Mount]) -> AppliedLayer:
        with self.content.open_blob(layer.digest) as stream:
            return apply_to_mounts(stream, layer.media_type, mounts, tmp_root=self.tmp_root, limits=self.limits)

    # -- documents and the record -------------------------------------------------------------

    async def _write_documents(self, job: _Job, image: ImagePlan, tops: Mapping[str, Mapping[str, str]]) -> None:
        """Store every document, children first, with the labels that keep what they point at."""
        manifests = {desc.digest: manifest for desc, manifest in image.manifests}
        configs = {manifest.config.digest for manifest in manifests.values()}
        for digest in configs:
            labels = dict(job.source_labels)
            for snapshotter, top in tops.get(digest, {}).items():
                labels[GC_REF_SNAPSHOT + snapshotter] = top
            await self._write_document(image, digest, labels)
        for digest, manifest in manifests.items():
            labels = {**job.source_labels, f"{GC_REF_CONTENT}.config": manifest.config.digest}
            for i, layer in enumerate(manifest.layers):
                labels[f"{GC_REF_CONTENT}.l.{i}"] = layer.digest
            await self._write_document(image, digest, labels)
        indexes = [d for d in image.documents if d not in manifests and d not in configs]
        # Nested indexes: the root last, so that what it points at is in first.
        indexes.sort(key=lambda d: d == image.root.digest)
        for digest in indexes:
            root = image.root if digest == image.root.digest else None
            media_type = root.media_type if root is not None else mediatypes.OCI_INDEX
            index = parse_index(image.documents[digest], media_type, f"{image.ref}: {digest}")
            labels = dict(job.source_labels)
            for i, entry in enumerate(index.manifests):
                if entry.digest in image.documents:
                    labels[f"{GC_REF_CONTENT}.m.{i}"] = entry.digest
            await self._write_document(image, digest, labels)

    async def _write_document(self, image: ImagePlan, digest: str, labels: Mapping[str, str]) -> None:
        await asyncio.to_thread(self._store_document, image.documents[digest], digest, labels)

    def _store_document(self, data: bytes, digest: str, labels: Mapping[str, str]) -> None:
        sink = self.content.new_blob(f"pull-{digest}")
        try:
            sink.write(data)
            sink.commit(labels, digest)
        finally:
            sink.close()

    async def _store_images(self, request: PullRequest, ref: ImageRef, root: Descriptor) -> list[Image]:
        """Store the image under its name and its extra references, as containerd's image
        store does on a pull: each extra reference that names an image (see
        :class:`ExtraReference`) gets the request's labels, and, when the image has a name of
        its own, ``containerd.io/gc.bref.image`` naming it and a ``containerd.io/gc.expire`` of
        now (containerd 2.3: such a name goes when the image it came with goes). The name is
        the reference when the request gives neither a name nor extra references."""
        names: list[tuple[str, Mapping[str, str]]] = []
        if request.name or not request.extra_references:
            names.append((request.name or str(ref), request.labels))
        extra_labels = dict(request.labels)
        if request.name:
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            extra_labels.update({GC_BREF_IMAGE: request.name, GC_EXPIRE: now})
        for extra in request.extra_references:
            if extra.is_prefix and not extra.add_digest:
                continue
            names.append((f"{extra.name}@{root.digest}" if extra.add_digest else extra.name, extra_labels))
        if not names:
            raise NotFound("no image name found")
        return [await self._store_image(name, labels, root) for name, labels in names]

    async def _store_image(self, name: str, labels: Mapping[str, str], root: Descriptor) -> Image:
        """Create the image record ``name``, or point an existing one at what was pulled."""
        image = Image(name=name, target=RecordDescriptor(root.media_type, root.digest, root.size),
                      labels=freeze(labels))
        namespace = namespaces.require()
        try:
            stored = await self.db.run(self.images.create, image)
            self.events.publish(namespace, "/images/create",
                                events_pb2.ImageCreate(name=stored.name, labels=dict(stored.labels)))
        except AlreadyExists:
            current = await self.db.run(self.images.get, name)
            if current.target.digest == root.digest and all(
                    current.labels.get(k) == v for k, v in labels.items() if v):
                return current  # the same image again: nothing to change, no event
            paths = ["target", *(f"labels.{key}" for key in labels)]
            stored = await self.db.run(self.images.update, image, paths)
            self.events.publish(namespace, "/images/update",
                                events_pb2.ImageUpdate(name=stored.name, labels=dict(stored.labels)))
        return stored


class _LocalFirst(Remote):
    """A remote whose documents (manifests, indexes, configs) come from the namespace's content
    store when it holds them, or may link them under the sharing policy: a second pull of an
    image, in this namespace or another, asks the registry only what its tag points at now."""

    def __init__(self, content: NamespacedContent, session: Session, **kwargs: Any) -> None:
        super().__init__(session, **kwargs)
        self._content = content

    async def fetch_document(self, reference: str | ImageRef, descriptor: Descriptor) -> bytes:
        data = await asyncio.to_thread(self._local, descriptor)
        if data is not None:
            return data
        return await super().fetch_document(reference, descriptor)

    def _local(self, descriptor: Descriptor) -> bytes | None:
        if descriptor.size > self.session.options.max_document:
            return None
        try:
            with self._content.open_shared(descriptor.digest, descriptor.size) as stream:
                data = stream.read(descriptor.size + 1)
        except (NotFound, InvalidArgument):
            return None
        if len(data) != descriptor.size or sha256_digest(data) != descriptor.digest:
            return None  # not sha256, or not what the descriptor says: ask the registry
        return data


def _wanted(image: ImagePlan, wanted: Sequence[Platform]) -> list[tuple[Descriptor, Manifest]]:
    """Of an image planned for every platform, the manifests whose layers a pull for
    ``wanted`` fetches: the best match of each wanted platform (all of them when none is
    wanted). NotFound when none matches, as when the plan itself was for those platforms."""
    if not wanted or not mediatypes.is_index(image.root.media_type):
        return list(image.manifests)  # a lone manifest is pulled whatever its platform, as without
    candidates = [Descriptor(desc.media_type, desc.digest, desc.size, platform=platform)
                  for (desc, _), platform in zip(image.manifests, image.platforms, strict=True)]
    best = {desc.digest for desc in select_each(candidates, wanted)}
    if not best:
        raise NotFound(f"no match for platform in manifest {image.root.digest}")
    return [(desc, manifest) for desc, manifest in image.manifests if desc.digest in best]


def _unique_layers(manifests: Sequence[tuple[Descriptor, Manifest]]) -> list[Descriptor]:
    """Every layer of ``manifests`` once, bottom first per manifest."""
    seen: set[str] = set()
    out: list[Descriptor] = []
    for _, manifest in manifests:
        for layer in manifest.layers:
            if layer.digest not in seen:
                seen.add(layer.digest)
                out.append(layer)
    return out


def _matcher(wanted: Sequence[Platform]) -> platform_matchers.Matcher | None:
    """The platform matcher for a pull's platforms (None: all of them)."""
    if not wanted:
        return None
    if len(wanted) == 1:
        return platform_matchers.only(wanted[0])
    return platform_matchers.ordered(wanted)


def _config(image: ImagePlan, manifest: Manifest) -> ImageConfig:
    return parse_config(image.documents[manifest.config.digest], f"{image.ref}: config {manifest.config.digest}")


def _in_context(error: CtrpyError, context: str) -> CtrpyError:
    """``error`` (same kind) with ``context`` before its subject, so the user sees which image
    and layer a failure deep in the differ is about."""
    error.subject = f"{context}: {error.subject}" if error.subject else context
    error.args = (error.message,)
    return error


async def _remove_quietly(store: SnapshotStore, key: str) -> None:
    with contextlib.suppress(CtrpyError):
        await store.remove(key)


async def _all_or_nothing(work: Sequence[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run ``work`` concurrently; on the first failure cancel the rest and raise that failure
    (not an ExceptionGroup: the client wants the one clear error)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    if not tasks:
        return []
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:  # in order: a layer's own failure before the unpack that waited on it
            if task in done and not task.cancelled() and (error := task.exception()) is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
