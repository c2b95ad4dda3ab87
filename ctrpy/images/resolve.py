"""Walking an image's content: its children, the manifest that fits a platform, its config,
platforms, size and completeness, read through the Content API as containerd's client does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ctrpy import errors
from ctrpy.client import Client
from ctrpy.images import mediatypes, platforms
from ctrpy.images.content import exists, read_blob
from ctrpy.images.model import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_config,
    parse_index,
    parse_manifest,
)
from ctrpy.images.platforms import Matcher


def read_manifest(client: Client, desc: Descriptor) -> Manifest:
    """Read and parse the manifest ``desc`` points at; raises NotFound or InvalidArgument."""
    return parse_manifest(read_blob(client, desc), desc.media_type, f"manifest {desc.digest}")


def read_index(client: Client, desc: Descriptor) -> Index:
    """Read and parse the index ``desc`` points at; raises NotFound or InvalidArgument."""
    return parse_index(read_blob(client, desc), desc.media_type, f"index {desc.digest}")


def read_config(client: Client, desc: Descriptor) -> ImageConfig:
    """Read and parse an image config; raises NotFound or InvalidArgument."""
    return parse_config(read_blob(client, desc), f"config {desc.digest}")


def children(client: Client, desc: Descriptor) -> tuple[Descriptor, ...]:
    """The descriptors ``desc`` refers to: config and layers of a manifest, entries of an
    index, nothing for a layer or config (or a type nobody knows)."""
    if mediatypes.is_manifest(desc.media_type):
        return read_manifest(client, desc).children()
    if mediatypes.is_index(desc.media_type):
        return read_index(client, desc).manifests
    return ()


def fits(matcher: Matcher, desc: Descriptor) -> bool:
    """An index entry is kept when it has no platform or its platform matches."""
    return desc.platform is None or matcher.match(desc.platform)


def resolve_manifest(client: Client, target: Descriptor, matcher: Matcher | None) -> tuple[Descriptor, Manifest]:
    """The manifest an image uses on a platform (containerd's ``images.Manifest``).

    A target that is a manifest is used as it is. In an index, the entries that fit are
    ordered best first and the first one is followed; a manifest found inside an index without
    a platform in its descriptor is checked against its config. Raises NotFound ("no match for
    platform in manifest ...") when nothing fits, InvalidArgument for an unknown media type.
    """
    was_index = False
    desc = target
    for _depth in range(16):  # nested indexes are rare; a cycle is an error
        if mediatypes.is_manifest(desc.media_type):
            manifest = read_manifest(client, desc)
            if desc.digest != target.digest and matcher is not None:
                if desc.platform is not None:
                    wanted = matcher.match(desc.platform)
                else:
                    wanted = matcher.match(platforms.normalize(_config_platform(read_config(client, manifest.config))))
                if not wanted:
                    break
            return desc, manifest
        if mediatypes.is_index(desc.media_type):
            index = read_index(client, desc)
            entries = list(index.manifests)
            if matcher is not None:
                entries = platforms.best_first(matcher, [d for d in entries if fits(matcher, d)])
            was_index = True
            if not entries:
                break
            desc = entries[0]
            continue
        raise errors.NotFound(f"unexpected media type {desc.media_type} for {desc.digest}")
    else:
        raise errors.InvalidArgument(f"index {target.digest}: nested too deeply")
    if was_index:
        raise errors.NotFound(f"no match for platform in manifest {target.digest}")
    raise errors.NotFound(f"manifest {target.digest}")


def _config_platform(config: ImageConfig) -> Platform:
    # containerd compares only os and architecture from a config.
    return Platform(config.os, config.architecture)


def resolve_config(client: Client, target: Descriptor, matcher: Matcher | None) -> tuple[Descriptor, ImageConfig]:
    """The config descriptor and parsed config of the manifest :func:`resolve_manifest` picks."""
    _, manifest = resolve_manifest(client, target, matcher)
    return manifest.config, read_config(client, manifest.config)


def platforms_of(client: Client, target: Descriptor) -> list[Platform]:
    """Every platform an image declares (containerd's ``images.Platforms``): the platform of each
    index entry that has one, else the os/architecture of the configs below."""
    found: list[Platform] = []
    pending = [target]
    while pending:
        desc = pending.pop(0)
        if desc.platform is not None:
            found.append(desc.platform)
            continue
        if mediatypes.is_config(desc.media_type):
            found.append(platforms.normalize(_config_platform(read_config(client, desc))))
            continue
        pending[:0] = children(client, desc)
    return found


def walk_for_platform(client: Client, target: Descriptor, matcher: Matcher) -> Iterator[Descriptor]:
    """``target`` and what it needs on one platform: of each index, only the best entry."""
    pending = [target]
    while pending:
        desc = pending.pop(0)
        yield desc
        kids = [d for d in children(client, desc) if fits(matcher, d)]
        if mediatypes.is_index(desc.media_type):
            kids = platforms.best_first(matcher, kids)[:1]
            if not kids:
                raise errors.NotFound(f"no match for platform in manifest {desc.digest}")
        pending[:0] = kids


def image_size(client: Client, target: Descriptor, matcher: Matcher) -> int:
    """The bytes an image takes on one platform: index, manifest, config and layers."""
    return sum(desc.size for desc in walk_for_platform(client, target, matcher))


@dataclass(frozen=True)
class CheckResult:
    """Whether an image's content is all here (containerd's ``images.Check``)."""

    available: bool
    required: tuple[Descriptor, ...]
    present: tuple[Descriptor, ...]
    missing: tuple[Descriptor, ...]

    @property
    def complete(self) -> bool:
        return self.available and not self.missing


def check(client: Client, target: Descriptor, matcher: Matcher) -> CheckResult:
    """Check that the config and layers of the image's manifest are stored.

    A manifest that cannot be found makes the image unavailable; other errors are raised.
    """
    try:
        _, manifest = resolve_manifest(client, target, matcher)
    except errors.NotFound:
        return CheckResult(False, (target,), (), (target,))
    required = manifest.children()
    present = tuple(d for d in required if exists(client, d.digest))
    missing = tuple(d for d in required if d not in present)
    return CheckResult(True, required, present, missing)
