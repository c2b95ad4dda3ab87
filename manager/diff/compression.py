"""Layer media types, and the streams that decompress, hash and count a layer's bytes.

A layer blob is a tar archive, compressed or not. Its *diff id* is the sha256 of the
uncompressed tar, every byte of it, trailing padding included. :class:`LayerStream` decompresses
a blob as it is read, hashes and counts what the decompressor yields, and enforces a size limit;
:class:`DigestWriter` does the same on the way out when a diff is written.

Which media types are layers follows containerd's ``images.DiffCompression``: a plain OCI tar is
read as it is; for the other layer types (gzip, zstd, and Docker's, which are sometimes
mislabelled) the compression is detected from the stream's magic number, as containerd's
``compression.DecompressStream`` does. zstd needs the optional ``zstandard`` package.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import zlib
from typing import Any, BinaryIO, Literal, Protocol

from ctrpy import errors
from ctrpy.errors import InvalidArgument

__all__ = [
    "DOCKER_LAYER",
    "DOCKER_LAYER_FOREIGN",
    "DOCKER_LAYER_FOREIGN_GZIP",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_ZSTD",
    "LAYER_MEDIA_TYPES",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE",
    "OCI_LAYER_NONDISTRIBUTABLE_GZIP",
    "OCI_LAYER_NONDISTRIBUTABLE_ZSTD",
    "OCI_LAYER_ZSTD",
    "Compression",
    "DigestWriter",
    "LayerStream",
    "LayerTooLarge",
    "diff_compression",
    "zstd_available",
]

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = OCI_LAYER_NONDISTRIBUTABLE + "+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = OCI_LAYER_NONDISTRIBUTABLE + "+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"
DOCKER_LAYER_ZSTD = DOCKER_LAYER + ".zstd"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP = DOCKER_LAYER_FOREIGN + ".gzip"

# Layer media types read as they are (no decompression), and those whose compression is
# detected from the stream.
_PLAIN = frozenset({OCI_LAYER, OCI_LAYER_NONDISTRIBUTABLE})
_DETECTED = frozenset(
    {
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_ZSTD,
        DOCKER_LAYER_FOREIGN,
        DOCKER_LAYER_FOREIGN_GZIP,
    }
)
LAYER_MEDIA_TYPES = _PLAIN | _DETECTED

_GZIP_MAGIC = b"\x1f\x8b\x08"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16
_GZIP_READ = 1 << 20  # compressed bytes taken from the source at a time

Compression = Literal["gzip"] | None


class LayerTooLarge(InvalidArgument):
    """A layer went past a configured limit (uncompressed bytes or number of entries)."""


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def zstd_available() -> bool:
    """Whether the optional ``zstandard`` package is importable (needed for zstd layers)."""
    try:
        importlib.import_module("zstandard")
    except ImportError:
        return False
    return True


class _Prefixed:
    """A reader that yields ``prefix`` first, then the rest of ``source``."""

    def __init__(self, prefix: bytes, source: BinaryIO) -> None:
        self._prefix = prefix
        self._source = source

    def read(self, size: int = -1, /) -> bytes:
        if self._prefix:
            if size is None or size < 0:
                data, self._prefix = self._prefix + self._source.read(), b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._source.read(size)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


class _GzipReader:
    """Gzip members, one after another, decompressed with zlib in large pieces.

    ``gzip.GzipFile`` reads its source 8 KiB at a time and computes the CRC in Python-called
    steps: on a layer of hundreds of MiB that is most of the unpack. zlib itself checks each
    member's CRC and length (``wbits=31``); a stream that ends inside a member is an error, as
    in Go's reader; after a member comes another member or zero padding, nothing else.
    """

    def __init__(self, source: _Reader) -> None:
        self._source = source
        self._zlib = zlib.decompressobj(31)
        self._input = b""  # compressed bytes not yet given to zlib
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(_GZIP_READ):
                parts.append(chunk)
            return b"".join(parts)
        while not self._ended:
            if not self._input:
                self._input = self._source.read(_GZIP_READ)
                if not self._input:
                    if self._zlib.eof:
                        self._ended = True
                        break
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
            if self._zlib.eof:  # a member ended: zero padding (as Python's gzip allows), or the next
                self._input = self._input.lstrip(b"\0")
                if not self._input:
                    continue
                if not self._input.startswith(b"\x1f\x8b"[: len(self._input)]):
                    raise zlib.error("trailing garbage after the last gzip member")
                self._zlib = zlib.decompressobj(31)
            data = self._zlib.decompress(self._input, size)
            self._input = self._zlib.unconsumed_tail or self._zlib.unused_data
            if data:
                return data
        return b""


def _decompressor(stream: BinaryIO, media_type: str) -> _Reader:
    if media_type in _PLAIN:
        return stream
    if media_type not in _DETECTED:
        raise errors.NotImplemented(f"unsupported layer media type {media_type!r}")
    magic = _read_exactly(stream, len(_ZSTD_MAGIC))
    source = _Prefixed(magic, stream)
    if magic.startswith(_GZIP_MAGIC):
        return _GzipReader(source)
    if magic == _ZSTD_MAGIC:
        try:
            zstandard: Any = importlib.import_module("zstandard")
        except ImportError:
            raise errors.NotImplemented(
                f"layer media type {media_type!r}: zstd needs the zstandard package"
            ) from None
        reader: _Reader = zstandard.ZstdDecompressor().stream_reader(
            source, read_across_frames=True
        )
        return reader
    return source


class LayerStream:
    """The uncompressed bytes of a layer blob, hashed and counted as they are read.

    ``read`` serves the tar reader; :meth:`drain` reads whatever is left (the tar's trailing
    padding, or data after it) so that :attr:`digest` and :attr:`size` cover the whole
    uncompressed stream. Raises :class:`NotImplemented` for a media type that is not a layer
    (or zstd without ``zstandard``), :class:`LayerTooLarge` past ``max_bytes``, and
    :class:`InvalidArgument` when the compressed data is corrupt.
    """

    def __init__(self, stream: BinaryIO, media_type: str, max_bytes: int | None = None) -> None:
        self._source = _decompressor(stream, media_type)
        self._hash = hashlib.sha256()
        self._max = max_bytes
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        """Up to ``size`` uncompressed bytes (all the rest when negative); ``b""`` at the end."""
        try:
            data = self._source.read(size)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InvalidArgument(f"layer data is corrupt: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("zstandard"):  # zstandard.ZstdError
                raise InvalidArgument(f"layer data is corrupt: {exc}") from exc
            raise
        if data:
            self.size += len(data)
            if self._max is not None and self.size > self._max:
                raise LayerTooLarge(f"layer exceeds {self._max} uncompressed bytes")
            self._hash.update(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the stream to its end."""
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of everything read so far."""
        return "sha256:" + self._hash.hexdigest()


def diff_compression(media_type: str) -> Compression:
    """The compression of a diff requested as ``media_type``, as containerd's walking differ
    decides it: OCI gzip (also for an empty media type, the default) or plain OCI tar.

    Raises :class:`~ctrpy.errors.NotImplemented` for any other media type (zstd included).
    """
    if media_type in ("", OCI_LAYER_GZIP):
        return "gzip"
    if media_type == OCI_LAYER:
        return None
    raise errors.NotImplemented(f"unsupported diff media type: {media_type}")


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int | None: ...


class DigestWriter:
    """Writes a tar stream to ``out``, optionally gzip-compressed, hashing the uncompressed bytes.

    Call :meth:`close` to finish the compressed stream; ``out`` itself is left open.
    """

    def __init__(self, out: BinaryIO, compression: Compression) -> None:
        self._gzip: gzip.GzipFile | None = None
        self._target: _Writer = out
        if compression == "gzip":
            # mtime 0 and no file name keep the output deterministic, as Go's gzip writer does.
            self._gzip = gzip.GzipFile(
                filename="", fileobj=out, mode="wb", compresslevel=6, mtime=0
            )
            self._target = self._gzip
        elif compression is not None:
            raise errors.NotImplemented(f"unsupported diff compression {compression!r}")
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        """Hash, count and pass on ``data``."""
        self._hash.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)

    def close(self) -> None:
        """Finish the compressed stream (a no-op for plain tar)."""
        if self._gzip is not None:
            self._gzip.close()

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the uncompressed bytes written so far."""
        return "sha256:" + self._hash.hexdigest()
