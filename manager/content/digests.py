"""Content digests: strict parsing, and incremental hashing of streams.

A digest is ``<algorithm>:<hex>``, as in OCI: ``sha256`` (the canonical algorithm, the one every
writer computes while data arrives) or ``sha512``, followed by exactly 64 or 128 lower-case
hexadecimal characters. Anything else is rejected with :class:`~ctrpy.errors.InvalidArgument`,
before it can become part of a path.
"""

from __future__ import annotations

import re
from typing import BinaryIO, Protocol

from ctrpy.errors import InvalidArgument

CANONICAL = "sha256"

# Hex length of each supported algorithm's digest.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

#: Chunk size for hashing and copying files: large enough to be fast, small enough to stream.
CHUNK_SIZE = 1 << 20

_HEX = re.compile(r"[0-9a-f]+")


class Hasher(Protocol):
    """The part of a :mod:`hashlib` object that the store uses."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def split(digest: str) -> tuple[str, str]:
    """Return ``(algorithm, hex)`` of a valid digest; raise InvalidArgument for anything else."""
    algorithm, sep, encoded = digest.partition(":")
    if not sep or not algorithm:
        raise InvalidArgument(f'invalid digest "{digest}": expected <algorithm>:<hex>')
    length = ALGORITHMS.get(algorithm)
    if length is None:
        raise InvalidArgument(f'invalid digest "{digest}": unsupported algorithm "{algorithm}"')
    if len(encoded) != length or not _HEX.fullmatch(encoded):
        raise InvalidArgument(
            f'invalid digest "{digest}": want {length} lower-case hexadecimal characters'
        )
    return algorithm, encoded


def validate(digest: str) -> str:
    """Return ``digest`` unchanged when it is valid; raise InvalidArgument otherwise."""
    split(digest)
    return digest


def is_valid_encoded(algorithm: str, encoded: str) -> bool:
    """Whether ``encoded`` is a well-formed hex digest for ``algorithm`` (for directory names)."""
    length = ALGORITHMS.get(algorithm)
    return length is not None and len(encoded) == length and bool(_HEX.fullmatch(encoded))


def new_hasher(algorithm: str = CANONICAL) -> Hasher:
    """A fresh hash object for ``algorithm`` (one of :data:`ALGORITHMS`)."""
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f'unsupported digest algorithm "{algorithm}"')
    # Imported here, at the first hash: hashlib loads OpenSSL's libcrypto, about 3.5 MiB of
    # resident memory in a daemon that has not yet been given any content.
    import hashlib

    return hashlib.new(algorithm)


def of(hasher: Hasher, algorithm: str = CANONICAL) -> str:
    """The digest string of what ``hasher`` has seen so far."""
    return f"{algorithm}:{hasher.hexdigest()}"


def from_bytes(data: bytes, algorithm: str = CANONICAL) -> str:
    """The digest of ``data`` (for small, in-memory values such as refs and tests)."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return of(hasher, algorithm)


def feed(hasher: Hasher, stream: BinaryIO, chunk_size: int = CHUNK_SIZE) -> int:
    """Hash ``stream`` to its end in chunks, never holding it all in memory; return bytes read."""
    count = 0
    while chunk := stream.read(chunk_size):
        hasher.update(chunk)
        count += len(chunk)
    return count


# from_bytes(b""), written out so that importing this module does not load hashlib.
EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
