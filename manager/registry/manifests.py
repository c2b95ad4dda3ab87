"""From a resolved reference to what a pull needs: the manifests for the wanted platforms, their
configs and layers.

:func:`select` is containerd's platform filter for an index: entries without a platform or
whose platform matches, best first, only the best unless all platforms are wanted.
:func:`plan` walks an image from its root (index or manifest), fetching and verifying every
document on the way, so that the Transfer service can then download the layers (concurrently,
into the content store) knowing every descriptor and holding every small document in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


def select_each(entries: Sequence[Descriptor], wanted: Sequence[Platform], limit: int = 0) -> list[Descriptor]:
    """The entries of an index a transfer pull follows (containerd's transfer image store
    filter): with no ``wanted`` platform every entry; otherwise the best entry for each wanted
    platform (once each, in the order of ``wanted``; containerd's ``SelectManifestsPerPlatform``)
    and the entries without a platform (their configs decide). With ``limit`` > 0, at most that
    many, preferred platforms first and entries without a platform last (containerd's
    ``LimitManifests``: ``ImageStore.manifest_limit``)."""
    if wanted:
        chosen: list[Descriptor] = []
        for platform in wanted:
            best = select(entries, platforms.only(platform))
            if best and best[0].platform is not None and best[0] not in chosen:
                chosen.append(best[0])
        kept = [d for d in entries if d in chosen or d.platform is None]
        kept.sort(key=lambda d: chosen.index(d) if d in chosen else len(chosen))
    else:
        kept = list(entries)
    return limit_entries(kept, platforms.ordered(wanted) if wanted else None, limit)


def limit_entries(entries: Sequence[Descriptor], order: Matcher | None, limit: int) -> list[Descriptor]:
    """``entries`` cut to ``limit`` (0: all of them), best first by ``order`` (None: as they
    are), those without a platform last."""
    if limit <= 0:
        return list(entries)
    return platforms.best_first(order or platforms.ALL, entries)[:limit]


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


async def plan(remote: Remote, resolved: Resolved, matcher: Matcher | None,
               choose: Callable[[Sequence[Descriptor]], list[Descriptor]] | None = None) -> ImagePlan:
    """Fetch and verify the documents below ``resolved`` for the platforms ``matcher`` wants
    (None: all of them). ``choose`` picks the entries of each index to follow (default:
    :func:`select` with ``matcher``, the best one); entries without a platform are then kept
    only when their config's platform matches ``matcher``. Raises NotFound ("no match for
    platform in manifest ...") when an index has nothing for the platform, InvalidArgument for
    malformed documents or unknown media types, and the remote's errors."""
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
            entries = choose(index.manifests) if choose is not None else select(index.manifests, matcher)
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
