"""Image references as the registry client needs them: host, repository and the object to fetch.

The grammar and Docker's normalisation (``busybox`` -> ``docker.io/library/busybox``) live in
:mod:`ctrpy.images.reference`; this module adds what a puller needs on top: a default tag, the
object a request names (the digest wins over a tag, as containerd resolves ``name:tag@digest``
by digest), and a digest algorithm the client can verify.
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrpy.errors import InvalidArgument
from ctrpy.images import reference as grammar
from ctrpy.images.model import validate_digest


@dataclass(frozen=True)
class ImageRef:
    """A normalised reference: ``host/repository[:tag][@digest]``, with at least one of tag and
    digest set (a bare name gets ``latest``)."""

    host: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """``host/repository``, without tag or digest."""
        return f"{self.host}/{self.repository}"

    @property
    def object(self) -> str:
        """What the manifest request names: the digest if there is one, else the tag."""
        return self.digest or self.tag

    def with_digest(self, digest: str) -> ImageRef:
        """The same name and tag pinned to ``digest``."""
        return ImageRef(self.host, self.repository, self.tag, digest)

    def __str__(self) -> str:
        return str(grammar.Reference(self.host, self.repository, self.tag, self.digest))


def parse(text: str) -> ImageRef:
    """Parse and normalise ``text`` (``busybox``, ``localhost:5000/a/b:tag``, ``name@sha256:...``,
    ``name:tag@sha256:...``). Raises InvalidArgument naming the input when it is malformed or its
    digest is not a well-formed sha256/sha384/sha512 digest."""
    if not text or text != text.strip():
        raise InvalidArgument(f"invalid reference format: {text!r}")
    parsed = grammar.parse_normalized(text)
    if parsed.digest:
        validate_digest(parsed.digest, f"reference {text!r}")
    tag = parsed.tag or ("" if parsed.digest else grammar.DEFAULT_TAG)
    return ImageRef(parsed.domain, parsed.path, tag, parsed.digest)
