"""Platform matching as containerd's ``platforms`` package does it.

A :class:`Matcher` says whether a platform fits (``match``) and which of two fits better
(``less``). :func:`default` is what ctr uses for import and unpack: the host's platform plus
what it can also run (amd64 runs 386; arm64 runs arm v8 down to v5), best first.
:func:`default_strict` (used by export) is the host's platform alone; :data:`ALL` takes anything.
"""

from __future__ import annotations

import os as _os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from ctrpy.errors import InvalidArgument
from ctrpy.images.model import Platform

_COMPONENT = re.compile(r"^[A-Za-z0-9_-]+$")
_KNOWN_OS = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux",
    "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos",
})
_KNOWN_ARCH = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64",
    "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64",
    "s390", "s390x", "sparc", "sparc64", "wasm",
})
_MACHINES = {
    "x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
    "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


def host_os() -> str:
    return "linux"


def host_arch() -> str:
    """The host's CPU architecture in Go's spelling (x86_64 -> amd64)."""
    machine = _os.uname().machine
    return _MACHINES.get(machine, machine)


def _cpu_variant() -> str:
    machine = _os.uname().machine
    if machine == "armv6l":
        return "v6"
    if machine == "armv7l":
        return "v7"
    return ""


def default_spec() -> Platform:
    """The host's own platform (``linux/amd64`` here)."""
    return Platform(host_os(), host_arch(), _cpu_variant())


def normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    """containerd's architecture aliases: x86_64 -> amd64, aarch64 -> arm64, armhf -> arm/v7..."""
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        return "arm64", "" if variant in ("8", "v8") else variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            return "arm", "v7"
        if variant in ("5", "6", "8"):
            return "arm", "v" + variant
    return arch, variant


def normalize(platform: Platform) -> Platform:
    """The canonical spelling of ``platform`` (an empty OS means the host's)."""
    os_name = platform.os.lower() if platform.os else host_os()
    if os_name == "macos":
        os_name = "darwin"
    arch, variant = normalize_arch(platform.architecture, platform.variant)
    return replace(platform, os=os_name, architecture=arch, variant=variant)


def parse(specifier: str) -> Platform:
    """Parse ``os``, ``arch``, ``os/arch`` or ``os/arch/variant``; raises InvalidArgument."""
    if "*" in specifier:
        raise InvalidArgument(f"{specifier!r}: wildcards not yet supported")
    parts = specifier.split("/")
    for part in parts:
        if not _COMPONENT.fullmatch(part):
            raise InvalidArgument(f"{part!r} is an invalid component of {specifier!r}")
    if len(parts) == 1:
        word = parts[0].lower()
        if word in _KNOWN_OS:
            return Platform(word, host_arch(), _cpu_variant())
        arch, variant = normalize_arch(parts[0], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        if arch in _KNOWN_ARCH:
            return Platform(host_os(), arch, variant)
        raise InvalidArgument(f"{specifier!r}: unknown operating system or architecture")
    if len(parts) == 2:
        arch, variant = normalize_arch(parts[1], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        return Platform(parts[0].lower(), arch, variant)
    if len(parts) == 3:
        arch, variant = normalize_arch(parts[1], parts[2])
        if arch == "arm64" and not variant:
            variant = "v8"
        return Platform(parts[0].lower(), arch, variant)
    raise InvalidArgument(f"{specifier!r}: cannot parse platform specifier")


class Matcher(Protocol):
    """Decides which platforms fit, and orders those that do."""

    def match(self, platform: Platform) -> bool:
        """Whether an image for ``platform`` fits."""
        ...

    def less(self, a: Platform, b: Platform) -> bool:
        """Whether ``a`` is preferred over ``b``."""
        ...


def _same(want: Platform, platform: Platform) -> bool:
    got = normalize(platform)
    return (want.os, want.architecture, want.variant) == (got.os, got.architecture, got.variant)


@dataclass(frozen=True)
class Ordered:
    """Matches any of ``platforms``; earlier ones are preferred."""

    platforms: tuple[Platform, ...]

    def match(self, platform: Platform) -> bool:
        return any(_same(want, platform) for want in self.platforms)

    def less(self, a: Platform, b: Platform) -> bool:
        for want in self.platforms:
            a_fits, b_fits = _same(want, a), _same(want, b)
            if a_fits and not b_fits:
                return True
            if a_fits or b_fits:
                return False
        return False

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.platforms)


@dataclass(frozen=True)
class _All:
    def match(self, platform: Platform) -> bool:
        return True

    def less(self, a: Platform, b: Platform) -> bool:
        return False

    def __str__(self) -> str:
        return "all"


ALL: Matcher = _All()


def _vector(platform: Platform) -> list[Platform]:
    """``platform`` followed by the older platforms its CPU also runs, best first."""
    out = [platform]
    base = Platform(platform.os, "", os_version=platform.os_version, os_features=platform.os_features)
    if platform.architecture == "amd64":
        level = platform.variant[1:] if platform.variant.startswith("v") else platform.variant
        if level.isdigit() and int(level) > 1:
            out += [replace(base, architecture="amd64", variant=f"v{n}") for n in range(int(level) - 1, 0, -1)]
        out.append(replace(base, architecture="386"))
    elif platform.architecture == "arm":
        level = platform.variant[1:] if platform.variant.startswith("v") else platform.variant
        if level.isdigit() and int(level) > 5:
            out += [replace(base, architecture="arm", variant=f"v{n}") for n in range(int(level) - 1, 4, -1)]
    elif platform.architecture == "arm64":
        out += _vector(replace(base, architecture="arm", variant=platform.variant or "v8"))
    return out


def only(platform: Platform) -> Ordered:
    """``platform`` and what it can also run (containerd's ``platforms.Only``)."""
    return Ordered(tuple(normalize(p) for p in _vector(normalize(platform))))


def only_strict(platform: Platform) -> Ordered:
    """Exactly ``platform``."""
    return Ordered((normalize(platform),))


def ordered(platforms: Sequence[Platform]) -> Ordered:
    """Any of ``platforms``, earlier ones preferred."""
    return Ordered(tuple(normalize(p) for p in platforms))


def default() -> Ordered:
    """The host's platform and what it can also run."""
    return only(default_spec())


def default_strict() -> Ordered:
    """The host's platform alone."""
    return only_strict(default_spec())


class _HasPlatform(Protocol):
    @property
    def platform(self) -> Platform | None: ...


_T = TypeVar("_T", bound=_HasPlatform)


def best_first(matcher: Matcher, descriptors: Sequence[_T]) -> list[_T]:
    """Stable sort: preferred platforms first, descriptors without a platform last (as
    containerd sorts the matching manifests of an index)."""
    out: list[_T] = []
    for item in descriptors:
        position = len(out)
        while position > 0 and _before(matcher, item, out[position - 1]):
            position -= 1
        out.insert(position, item)
    return out


def _before(matcher: Matcher, a: _HasPlatform, b: _HasPlatform) -> bool:
    if a.platform is None:
        return False
    if b.platform is None:
        return True
    return matcher.less(a.platform, b.platform)
