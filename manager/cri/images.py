"""The CRI's view of images: image records of the ``k8s.io`` namespace grouped by image id.

Kubernetes knows an image by its *id*, the digest of its config for this machine's platform,
and lists, per id, every ``name:tag`` (repo tags) and ``name@digest`` (repo digests) that points
at it. containerd's CRI keeps no images of its own either: it reads the image records of
``k8s.io`` and groups them the same way, so that what ``ctr -n k8s.io images`` imports or tags
shows up here and the reverse. What it writes, and so what this module writes:

- a pull of ``name:tag`` (or ``name@digest``) is one server-side pull (the Transfer service's
  :class:`~ctrpy.manager.transfer.pull.Puller`, unpacked into the default snapshotter), then up
  to three records pointing at the same target: the image id (``sha256:<config digest>``), the
  repo tag and the repo digest (``name@<target digest>``), each labelled
  ``io.cri-containerd.image=managed``; the sandbox image also gets
  ``io.cri-containerd.pinned=pinned``. Pulling by tag and by digest thus gives one image.
- a removal deletes every record of the image (its id record included), the last one followed
  by a garbage collection, so that its content and snapshots go too.
- a reference given by a user is resolved as containerd does: a digest or a (unique prefix of
  an) id first, else the Docker-normalised name (``busybox`` -> ``docker.io/library/busybox:latest``).

Two things are cached. The facts read from an image's content (config digest, size, USER),
keyed by the digest of the record's target, cannot change. The list of a namespace's images
(every CreateContainer resolves its image in it) is kept until an image or content event of
that namespace: every write to the image records publishes one after its commit, whoever makes
it. A list in which some record's content could not be read is not kept, since a content
commit publishes nothing and the image may become whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from ctrpy import namespaces
from ctrpy.api.containerd.events import image_pb2 as events_pb2
from ctrpy.errors import AlreadyExists, DeadlineExceeded, InvalidArgument, NotFound
from ctrpy.images import mediatypes, platforms
from ctrpy.images import reference as grammar
from ctrpy.images.model import Descriptor, chain_id, load_json, parse_index, parse_manifest
from ctrpy.manager.registry import CredentialSource
from ctrpy.manager.transfer.pull import PullRequest, UnpackTarget
from ctrpy.records import Descriptor as RecordDescriptor
from ctrpy.records import Image, freeze

from ..events import Envelope
from .deps import ImageBackends

log = structlog.get_logger(__name__)

MANAGED_LABEL = "io.cri-containerd.image"
MANAGED = "managed"
PINNED_LABEL = "io.cri-containerd.pinned"
PINNED = "pinned"
_ID = re.compile(r"^(?:sha256:)?([0-9a-f]{1,64})$")
_FULL_ID = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageFacts:
    """What an image's content says, for this platform: never changes for one target digest."""

    id: str  # sha256:<config digest hex>
    size: int  # bytes of the documents and layers this platform uses (compressed)
    user: str  # the config's USER ("" when unset)
    chain_id: str  # of the layers: the top snapshot's name
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CriImage:
    """One image as the CRI shows it: its id and every record (reference) that points at it."""

    facts: ImageFacts
    references: tuple[str, ...]
    pinned: bool

    @property
    def id(self) -> str:
        return self.facts.id

    @property
    def repo_tags(self) -> list[str]:
        return [ref for ref in self.references if _kind(ref) == "tag"]

    @property
    def repo_digests(self) -> list[str]:
        return [ref for ref in self.references if _kind(ref) == "digest"]

    def uid_and_username(self) -> tuple[int | None, str]:
        """The USER of the config as the CRI reports it (containerd's getUserFromImage): a
        numeric user (before any ``:group``) is a uid, anything else a user name."""
        user = self.facts.user.split(":", 1)[0]
        if not user:
            return None, ""
        try:
            return int(user, 10), ""
        except ValueError:
            return None, user


def _kind(reference: str) -> str:
    """``tag``, ``digest`` or ``id`` (``sha256:<hex>`` and anything unparseable)."""
    if _FULL_ID.match(reference):
        return "id"
    try:
        parsed = grammar.parse_normalized(reference)
    except InvalidArgument:
        return "id"
    if parsed.digest:
        return "digest"
    return "tag" if parsed.tag else "id"


class CriImages:
    """The image half of the CRI over the metadata, content and transfer stores."""

    def __init__(self, backends: ImageBackends) -> None:
        self.db, self.images, self.content = backends.db, backends.images, backends.content
        self.transfers, self.events, self.gc = backends.transfers, backends.events, backends.gc
        self.settings = backends.settings
        self._facts: dict[str, ImageFacts] = {}  # target digest -> facts
        self._matcher = platforms.default()
        self._listed: dict[str, list[CriImage]] = {}  # namespace -> its images (see the docstring)
        self._changes: dict[str, int] = {}  # namespace -> image and content events seen
        self.events.observers.append(self._observe)

    def _observe(self, envelope: Envelope) -> None:
        if envelope.topic.startswith(("/images/", "/content/")):
            self._listed.pop(envelope.namespace, None)
            self._changes[envelope.namespace] = self._changes.get(envelope.namespace, 0) + 1

    # -- reading ----------------------------------------------------------------------------

    async def list(self) -> list[CriImage]:
        """Every image of the namespace, by id (records whose content is missing are skipped)."""
        namespace = namespaces.require()
        listed = self._listed.get(namespace)
        if listed is not None:
            return list(listed)
        changes = self._changes.get(namespace, 0)
        whole = True
        records = await self.db.run(self.images.list)
        by_id: dict[str, tuple[ImageFacts, list[str], bool]] = {}
        targets: set[str] = set()
        for record in records:
            targets.add(record.target.digest)
            try:
                facts = await self.facts(record.target)
            except (NotFound, InvalidArgument) as error:
                log.debug("image skipped by the CRI", image=record.name, error=str(error))
                whole = False
                continue
            entry = by_id.setdefault(facts.id, (facts, [], False))
            entry[1].append(record.name)
            if record.labels.get(PINNED_LABEL) == PINNED and not entry[2]:
                by_id[facts.id] = (entry[0], entry[1], True)
        for stale in set(self._facts) - targets:
            del self._facts[stale]
        listed = [CriImage(facts, tuple(sorted(refs)), pinned) for facts, refs, pinned in by_id.values()]
        if whole and changes == self._changes.get(namespace, 0):  # nothing moved while it was read
            self._listed[namespace] = listed
        return list(listed)

    async def resolve(self, ref_or_id: str) -> CriImage:
        """The image ``ref_or_id`` names, looked up as containerd's localResolve does: a full id
        (``sha256:<hex>``), else a reference (normalised), else a unique prefix of an id (with
        or without ``sha256:``). NotFound when none matches."""
        if not ref_or_id:
            raise InvalidArgument("image reference is empty")
        found = await self.list()
        if _FULL_ID.match(ref_or_id):
            for image in found:
                if image.id == ref_or_id:
                    return image
            raise NotFound(f"image {ref_or_id!r}")
        with contextlib.suppress(InvalidArgument):
            normalized = grammar.normalize(ref_or_id)
            for image in found:
                if normalized in image.references:
                    return image
        match = _ID.match(ref_or_id)
        if match is not None:
            prefixed = [image for image in found if image.id.removeprefix("sha256:").startswith(match[1])]
            if len(prefixed) == 1:
                return prefixed[0]
        raise NotFound(f"image {ref_or_id!r}")

    async def facts(self, target: RecordDescriptor) -> ImageFacts:
        """The facts of the image whose record points at ``target`` (cached by its digest)."""
        known = self._facts.get(target.digest)
        if known is None:
            known = await asyncio.to_thread(self._read_facts, target)
            self._facts[target.digest] = known
        return known

    def _read_facts(self, target: RecordDescriptor) -> ImageFacts:
        size = target.size
        desc = Descriptor(target.media_type, target.digest, target.size)
        if mediatypes.is_index(desc.media_type):
            index = parse_index(self._blob(desc), desc.media_type, f"index {desc.digest}")
            fitting = [m for m in index.manifests if m.platform is None or self._matcher.match(m.platform)]
            if not fitting:
                raise NotFound(f"image {desc.digest}: no manifest for this platform")
            desc = platforms.best_first(self._matcher, fitting)[0]
            size += desc.size
        if not mediatypes.is_manifest(desc.media_type):
            raise InvalidArgument(f"image {target.digest}: {desc.media_type!r} is not an image")
        manifest = parse_manifest(self._blob(desc), desc.media_type, f"manifest {desc.digest}")
        config = load_json(self._blob(manifest.config), f"config {manifest.config.digest}")
        size += manifest.config.size + sum(layer.size for layer in manifest.layers)
        settings = config.get("config") if isinstance(config.get("config"), dict) else {}
        user = settings.get("User") if isinstance(settings, dict) else ""
        rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else {}
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else []
        return ImageFacts(
            id=manifest.config.digest, size=size, user=user if isinstance(user, str) else "",
            chain_id=chain_id([str(d) for d in diff_ids]) if isinstance(diff_ids, list) and diff_ids else "",
            config=config,
        )  # fmt: skip

    def _blob(self, desc: Descriptor) -> bytes:
        with self.content.open_blob(desc.digest) as stream:
            return stream.read()

    def verbose_info(self, image: CriImage) -> dict[str, str]:
        """ImageStatus's verbose ``info``: the config and the chain id, as containerd gives them."""
        return {"info": json.dumps({"chainID": image.facts.chain_id, "imageSpec": image.facts.config})}

    # -- pulling -----------------------------------------------------------------------------

    async def pull(self, reference: str, credentials: CredentialSource | None) -> str:
        """Pull ``reference`` for this platform, unpacked; name it as the module docstring says;
        return the image id."""
        try:
            normalized = grammar.normalize(reference)
        except InvalidArgument as error:
            raise InvalidArgument(f"failed to parse image reference {reference!r}: {error.message}") from None
        labels = {MANAGED_LABEL: MANAGED}
        if self._is_sandbox_image(normalized):
            labels[PINNED_LABEL] = PINNED
        host = platforms.default_spec()
        request = PullRequest(reference=normalized, name=normalized, labels=labels, platforms=(host,),
                              unpacks=(UnpackTarget(host),), host_dir=self.settings.config_path,
                              # A loopback registry is spoken to over HTTP, as containerd's CRI
                              # does (defaultScheme: localhost means http); others over HTTPS.
                              plain_http=True, credentials=credentials)
        puller = await self.transfers.puller()
        record = await self._watched(puller.pull, request, normalized)
        facts = await self.facts(record.target)
        parsed = grammar.parse_normalized(normalized)
        name = f"{parsed.domain}/{parsed.path}"
        references = [facts.id, normalized if not parsed.digest else "", f"{name}@{record.target.digest}"]
        for ref in references:
            if ref:
                await self._reference(ref, record.target, labels)
        return facts.id

    def _is_sandbox_image(self, normalized: str) -> bool:
        with contextlib.suppress(InvalidArgument):
            return bool(self.settings.sandbox_image) and grammar.normalize(self.settings.sandbox_image) == normalized
        return False

    async def _watched(self, pull: Any, request: PullRequest, name: str) -> Image:
        """Run ``pull(request, progress)``, cancelling it when no progress is reported for the
        configured timeout (containerd's image_pull_progress_timeout)."""
        timeout = self.settings.progress_timeout
        last = time.monotonic()

        def progress(*_: object) -> None:
            nonlocal last
            last = time.monotonic()

        task: asyncio.Task[Image] = asyncio.ensure_future(pull(request, progress))
        if timeout <= 0:
            return await task
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=min(timeout / 4, 5.0))
                if done:
                    return task.result()
                if time.monotonic() - last > timeout:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise DeadlineExceeded(
                        f"failed to pull and unpack image {name!r}: cancelled due to no progress in {timeout:g}s")
        finally:
            if not task.done():
                task.cancel()

    async def _reference(self, name: str, target: RecordDescriptor, labels: Mapping[str, str]) -> None:
        """Create record ``name`` -> ``target`` with ``labels``, or bring an existing one there
        (containerd's createImageReference)."""
        namespace = namespaces.require()
        image = Image(name=name, target=target, labels=freeze(dict(labels)))
        try:
            created = await self.db.run(self.images.create, image)
        except AlreadyExists:
            current = await self.db.run(self.images.get, name)
            if current.target.digest == target.digest and all(current.labels.get(k) == v for k, v in labels.items()):
                return
            paths = ["target", *(f"labels.{key}" for key in labels)]
            updated = await self.db.run(self.images.update, image, paths)
            self.events.publish(namespace, "/images/update",
                                events_pb2.ImageUpdate(name=updated.name, labels=dict(updated.labels)))
            return
        self.events.publish(namespace, "/images/create",
                            events_pb2.ImageCreate(name=created.name, labels=dict(created.labels)))

    # -- removing ----------------------------------------------------------------------------

    async def remove(self, ref_or_id: str) -> None:
        """Remove every record of the image ``ref_or_id`` names; nothing when there is none."""
        try:
            image = await self.resolve(ref_or_id)
        except NotFound:
            return
        namespace = namespaces.require()
        for name in _deletion_order(image.references):
            try:
                await self.db.run(self.images.delete, name)
            except NotFound:
                continue  # removed meanwhile: what we wanted
            self.events.publish(namespace, "/images/delete", events_pb2.ImageDelete(name=name))
        if self.gc is not None:
            with contextlib.suppress(Exception):  # collection off or failed: the records are gone anyway
                await self.gc.collect_now()


def _deletion_order(references: Sequence[str]) -> list[str]:
    """Names first, the id record last (as containerd's CRI lists them)."""
    return sorted(references, key=lambda ref: _kind(ref) == "id")
