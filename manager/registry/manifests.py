"""From a resolved reference to what a pull needs: the manifests for the wanted platforms, their
configs and layers.

:func:`select` is containerd's platform filter for an index: entries without a platform or
whose platform matches, best first, only the best unless all platforms are wanted.
:func:`plan` walks an image from its root (index or manifest), fetching and verifying every
document on the way, so that the Transfer service can then download the layers (concurrently,
into the content store) knowing every descriptor and holding every small document in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.images import mediatypes, platforms
from ctrpy.images.model import Descriptor, Manifest, Platform, parse_config, parse_index, parse_manifest
from ctrpy.images.platforms import Matcher
from ctrpy.manager.registry.reference import ImageRef
from ctrpy.manager.registry.remote import Remote, Resolved

MAX_DEPTH = 8


def select(entries: Sequence[Descriptor], matcher: Matcher | None) -> list[Descriptor]:
    """The entries of an index to follow: with a matcher, those without a platform or whose
    platform matches, best first, and only the first; with None (all platforms), every entry."""
    if matcher is None:
        return list(entries)
    fitting = [d for d in entries if d.platform is None or matcher.match(d.platform)]
    return platforms.best_first(matcher, fitting)[:1]


@dataclass(frozen=True)
class ImagePlan:
    """An image as a pull will fetch it.

    ``root`` is the descriptor the name points at; ``documents`` maps the digest of every index,
    manifest and config fetched to its verified bytes (to be written to the content store as
    they are); ``manifests`` are the platform manifests chosen, with their descriptors, in
    preference order; ``platforms`` are their configs' platforms, same order.
    """

    ref: ImageRef
    root: Descriptor
    documents: Mapping[str, bytes]
    manifests: tuple[tuple[Descriptor, Manifest], ...]
    platforms: tuple[Platform, ...] = field(default=())

    def layers(self) -> list[Descriptor]:
        """Every layer of the chosen manifests, each digest once, bottom first per manifest."""
        seen: set[str] = set()
        out: list[Descriptor] = []
        for _, manifest in self.manifests:
            for layer in manifest.layers:
                if layer.digest not in seen:
                    seen.add(layer.digest)
                    out.append(layer)
        return out

    def size(self) -> int:
        """Bytes to fetch: the documents plus every layer once."""
        return sum(len(data) for data in self.documents.values()) + sum(d.size for d in self.layers())


async def plan(remote: Remote, resolved: Resolved, matcher: Matcher | None) -> ImagePlan:
    """Fetch and verify the documents below ``resolved`` for the platforms ``matcher`` wants
    (None: all of them). Raises NotFound ("no match for platform in manifest ...") when an index
    has nothing for the platform, InvalidArgument for malformed documents or unknown media
    types, and the remote's errors."""
    ref = resolved.ref
    documents: dict[str, bytes] = {}
    chosen: list[tuple[Descriptor, Manifest]] = []
    found_platforms: list[Platform] = []

    async def document(desc: Descriptor) -> bytes:
        if desc.digest not in documents:
            if desc.digest == resolved.descriptor.digest and resolved.data is not None:
                documents[desc.digest] = resolved.data
            else:
                documents[desc.digest] = await remote.fetch_document(ref, desc)
        return documents[desc.digest]

    async def visit(desc: Descriptor, depth: int, from_index: bool) -> None:
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"{ref}: indexes nested more than {MAX_DEPTH} deep")
        where = f"{ref}: {desc.digest}"
        if mediatypes.is_index(desc.media_type):
            index = parse_index(await document(desc), desc.media_type, where)
            entries = select(index.manifests, matcher)
            if not entries:
                raise NotFound(f"no match for platform in manifest {desc.digest}")
            for entry in entries:
                await visit(entry, depth + 1, True)
            return
        if not mediatypes.is_manifest(desc.media_type):
            raise InvalidArgument(f"{where}: unexpected media type {desc.media_type!r}")
        manifest = parse_manifest(await document(desc), desc.media_type, where)
        config = parse_config(await document(manifest.config), f"{ref}: config {manifest.config.digest}")
        platform = platforms.normalize(Platform(config.os, config.architecture, config.variant))
        if from_index and desc.platform is None and matcher is not None and not matcher.match(
                Platform(config.os, config.architecture)):
            return  # a platform-less index entry whose config is for another platform
        chosen.append((desc, manifest))
        found_platforms.append(platform)

    await visit(resolved.descriptor, 0, False)
    if not chosen:
        raise NotFound(f"no match for platform in manifest {resolved.descriptor.digest}")
    return ImagePlan(ref, resolved.descriptor, MappingProxyType(documents), tuple(chosen), tuple(found_platforms))
