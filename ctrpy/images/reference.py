"""Image references: Docker's normalisation (``busybox`` -> ``docker.io/library/busybox:latest``),
its familiar short form, and the helpers an importer uses to name what it imports.

The grammar is the one of Docker's distribution ``reference`` package::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] component ( "/" component )*
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ctrpy.errors import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME = 255

# Docker's grammar writes the separator as ``[._]|__|[-]*``: a dash run that may be empty, so
# ``ab`` splits as ``a``, ``b`` as well as ``ab``. Go's linear-time engine does not care; Python's
# backtracking one tries every split when the match fails, which took 49 s on a 27-character
# name. A separator of at least one dash matches the same names (two runs of letters with
# nothing between them are one run) with one way to split each, so a failing match is linear.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$",
    re.ASCII,
)
_HEX64 = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text

    def familiar_name(self) -> str:
        """The name as Docker shows it: without ``docker.io/`` and ``library/``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith(OFFICIAL_PREFIX) and "/" not in path[len(OFFICIAL_PREFIX):]:
            path = path[len(OFFICIAL_PREFIX):]
        return path

    def familiar(self) -> str:
        """The familiar form of the whole reference (``busybox:latest``)."""
        text = self.familiar_name()
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text


def _split_domain(text: str) -> tuple[str, str]:
    slash = text.find("/")
    if slash < 0 or (not any(c in text[:slash] for c in ".:") and text[:slash] != "localhost"):
        domain, rest = DEFAULT_DOMAIN, text
    else:
        domain, rest = text[:slash], text[slash + 1:]
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = OFFICIAL_PREFIX + rest
    return domain, rest


def parse_normalized(text: str) -> Reference:
    """Parse ``text`` the way Docker's ``ParseNormalizedNamed`` does; raises InvalidArgument."""
    if _HEX64.fullmatch(text):
        raise InvalidArgument(f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
    domain, rest = _split_domain(text)
    name_part = rest.split("@", 1)[0]
    last = name_part.rsplit("/", 1)[-1]
    repository = name_part[: len(name_part) - len(last)] + last.split(":", 1)[0]
    if repository.lower() != repository:
        raise InvalidArgument(f"invalid reference format: repository name must be lowercase: {text!r}")
    match = _REFERENCE.fullmatch(f"{domain}/{rest}")
    if match is None:
        raise InvalidArgument(f"invalid reference format: {text!r}")
    if len(match["name"]) > MAX_NAME:
        raise InvalidArgument(f"repository name must not be more than {MAX_NAME} characters: {text!r}")
    return Reference(domain, match["name"][len(domain) + 1:], match["tag"] or "", match["digest"] or "")


def normalize(text: str) -> str:
    """The full reference containerd stores (``ParseDockerRef``): a digest wins over a tag, and a
    bare name gets ``:latest``. Raises InvalidArgument for a malformed reference."""
    ref = parse_normalized(text)
    if ref.digest:
        ref = Reference(ref.domain, ref.path, "", ref.digest)
    elif not ref.tag:
        ref = Reference(ref.domain, ref.path, DEFAULT_TAG)
    return str(ref)


def familiarize(text: str) -> str:
    """The short form Docker's ``manifest.json`` uses (``busybox:latest``)."""
    ref = parse_normalized(text)
    if not ref.tag and not ref.digest:
        ref = Reference(ref.domain, ref.path, DEFAULT_TAG)
    return ref.familiar()


def oci_ref_name(name: str) -> str:
    """The OCI ``ref.name`` annotation for a full name: its object (tag and/or ``@digest``).

    Like containerd's ``reference.Parse``, a name without a host part is returned unchanged.
    """
    slash = name.find("/")
    if slash <= 0:
        return name
    rest = name[slash + 1:]
    match = re.search(r"[:@]", rest)
    if match is None:
        return ""
    obj = rest[match.start():]
    return obj[1:] if obj.startswith(":") else obj


def _is_prefix(name: str, prefix: str) -> bool:
    if not name.startswith(prefix):
        return False
    return len(name) == len(prefix) or name[len(prefix)] in "/:@"


def ref_translator(prefix: str, only_prefixed: bool) -> Callable[[str], str]:
    """Turn an OCI ``ref.name`` into an image name, as ctr import does.

    A bare tag becomes ``<prefix>:<tag>``; a full reference is kept, or, with ``only_prefixed``
    (ctr's ``--base-name``), kept only when it starts with ``prefix`` (otherwise ``""``: skip).
    """

    def translate(ref: str) -> str:
        if any(c in ref for c in "/:@"):
            if only_prefixed and not _is_prefix(ref, prefix):
                return ""
            return ref
        return f"{prefix}:{ref}"

    return translate
