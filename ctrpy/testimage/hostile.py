"""Layers an unpacker must refuse or contain, for safety tests.

Each is a :class:`RawLayer` (gzip blob, diff_id, uncompressed size, descriptor), built with raw
tar headers so that nothing cleans the names up on the way. Every file they try to plant is
named :data:`EVIL_NAME`, so a test can look for it outside the root filesystem.

======================== ===================================================================
kind                     what the layer holds
======================== ===================================================================
path_traversal           a file ``../ctrpy-evil``
path_traversal_nested    a directory ``dir`` and a file ``dir/../../ctrpy-evil``
absolute_path            a file ``/ctrpy-evil`` (leading slash kept in the header)
symlink_escape           a symlink ``escape -> /``, then a file ``escape/ctrpy-evil``
symlink_escape_relative  a symlink ``escape -> ../../../../../../..``, then
                         ``escape/ctrpy-evil``
hardlink_escape          a hard link ``link`` to ``../../etc/passwd``
hardlink_absolute        a hard link ``link`` to ``/etc/passwd`` (absent inside the image)
hardlink_via_symlink     a symlink ``escape -> /``, then a hard link ``link`` to
                         ``escape/etc/passwd``
decompression_bomb       one file ``bomb`` of ``bomb_size`` zero bytes, about 1000:1 smaller
                         compressed
======================== ===================================================================
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import tarfile
import zlib

from ctrpy.testimage.model import EPOCH, Image, RawLayer

EVIL_NAME = "ctrpy-evil"
EVIL_DATA = b"planted by a hostile layer\n"
_BLOCK = 512
_CHUNK = 1 << 20


def _header(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "",
            mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.linkname = linkname
    info.mode = 0o777 if kind == tarfile.SYMTYPE else mode
    info.mtime = EPOCH
    info.uname = info.gname = ""
    return info


def _raw(members: list[tuple[tarfile.TarInfo, bytes]]) -> RawLayer:
    """Gzip a tar of ``members`` exactly as given (names are not normalised)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buf.getvalue()
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob = compressor.compress(raw) + compressor.flush()
    return RawLayer(blob, "sha256:" + hashlib.sha256(raw).hexdigest(), len(raw))


def _evil_file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return _header(name, size=len(EVIL_DATA)), EVIL_DATA


def _bomb(size: int) -> RawLayer:
    """A tar of one ``size``-byte file of zeros, deflated at about 1000:1.

    The tar after its first header is all zeros, so the deflate stream is built from one
    compressed 1 MiB piece repeated: after a full flush deflate starts afresh, so every
    identical chunk compresses to identical bytes. The gzip wrapper is written by hand.
    """
    header = _header("bomb", size=size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    # File data padded to a block, then the two zero blocks that end an archive.
    zeros = size + (-size % _BLOCK) + 2 * _BLOCK
    total = len(header) + zeros

    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(header)
    digest = hashlib.sha256(header)
    chunk = bytes(_CHUNK)
    full, rest = divmod(zeros, _CHUNK)
    piece = b""
    for index in range(full):
        if index < 2:
            # Compress the first two for real; from then on reuse the (identical) output.
            out = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
            if index == 1 and out != piece:
                raise AssertionError("deflate output of equal chunks differs")
            piece = out
        parts.append(piece)
        crc = zlib.crc32(chunk, crc)
        digest.update(chunk)
    tail = bytes(rest)
    parts.append(deflate.compress(tail) + deflate.flush(zlib.Z_FINISH))
    crc = zlib.crc32(tail, crc)
    digest.update(tail)

    gzip_header = b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x02\x03"
    trailer = struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF)
    blob = gzip_header + b"".join(parts) + trailer
    return RawLayer(blob, "sha256:" + digest.hexdigest(), total)


@functools.lru_cache(maxsize=4)
def hostile_layers(bomb_size: int = 1 << 30) -> dict[str, RawLayer]:
    """Every hostile layer of this module's table, by kind. ``bomb_size`` is the uncompressed
    size of the decompression bomb's one file (1 GiB by default). Results are cached; do not
    mutate the returned dict."""
    evil = EVIL_NAME
    return {
        "path_traversal": _raw([_evil_file(f"../{evil}")]),
        "path_traversal_nested": _raw([
            (_header("dir/", tarfile.DIRTYPE, mode=0o755), b""),
            _evil_file(f"dir/../../{evil}"),
        ]),
        "absolute_path": _raw([_evil_file(f"/{evil}")]),
        "symlink_escape": _raw([
            (_header("escape", tarfile.SYMTYPE, linkname="/"), b""),
            _evil_file(f"escape/{evil}"),
        ]),
        "symlink_escape_relative": _raw([
            (_header("escape", tarfile.SYMTYPE, linkname="../../../../../../.."), b""),
            _evil_file(f"escape/{evil}"),
        ]),
        "hardlink_escape": _raw([
            (_header("link", tarfile.LNKTYPE, linkname="../../etc/passwd"), b""),
        ]),
        "hardlink_absolute": _raw([
            (_header("link", tarfile.LNKTYPE, linkname="/etc/passwd"), b""),
        ]),
        "hardlink_via_symlink": _raw([
            (_header("escape", tarfile.SYMTYPE, linkname="/"), b""),
            (_header("link", tarfile.LNKTYPE, linkname="escape/etc/passwd"), b""),
        ]),
        "decompression_bomb": _bomb(bomb_size),
    }


def hostile_image(kind: str, name: str = "docker.io/library/hostile:latest",
                  bomb_size: int = 1 << 30) -> Image:
    """A one-layer image whose only layer is the hostile layer ``kind``.

    Raises KeyError for an unknown kind.
    """
    return Image(name, (hostile_layers(bomb_size)[kind],))
