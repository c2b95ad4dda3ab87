"""Turn a :class:`Layer` into tar bytes, gzip them, and hash both, in one streaming pass.

Output is deterministic: every member gets the fixed :data:`EPOCH` mtime and empty user and
group names, gzip gets mtime 0 and no file name, and members keep the layer's order.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zlib
from typing import IO, BinaryIO

from ctrpy.testimage.model import (
    BLOCK,
    CHAR,
    DIR,
    EPOCH,
    FIFO,
    FILE,
    HARDLINK,
    MEDIA_DOCKER_LAYER_TAR,
    MEDIA_OCI_LAYER_GZIP,
    SYMLINK,
    Entry,
    Layer,
    LayerInfo,
    RandomContent,
)

_TAR_TYPES = {
    FILE: tarfile.REGTYPE,
    DIR: tarfile.DIRTYPE,
    SYMLINK: tarfile.SYMTYPE,
    HARDLINK: tarfile.LNKTYPE,
    CHAR: tarfile.CHRTYPE,
    BLOCK: tarfile.BLKTYPE,
    FIFO: tarfile.FIFOTYPE,
}


class _HashingSink:
    """A write-only file for tarfile: hashes what it is given, optionally gzips it, and
    forwards the (compressed) bytes to ``out`` while hashing those too."""

    def __init__(self, out: IO[bytes], compresslevel: int | None) -> None:
        self._out = out
        # wbits=31 asks zlib for a gzip wrapper with mtime 0 and no name: stable bytes.
        self._zlib = (zlib.compressobj(compresslevel, zlib.DEFLATED, 31)
                      if compresslevel is not None else None)
        self.diff = hashlib.sha256()
        self.blob = hashlib.sha256()
        self.raw_size = 0
        self.blob_size = 0

    def write(self, data: bytes) -> int:
        self.diff.update(data)
        self.raw_size += len(data)
        self._emit(self._zlib.compress(data) if self._zlib is not None else bytes(data))
        return len(data)

    def tell(self) -> int:
        return self.raw_size

    def finish(self) -> None:
        if self._zlib is not None:
            self._emit(self._zlib.flush())

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self.blob.update(data)
            self.blob_size += len(data)


class _RandomReader:
    """A read-only file over a :class:`RandomContent`."""

    def __init__(self, content: RandomContent) -> None:
        self._chunks = content.chunks()
        self._buf = b""

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buf += chunk
        if size < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:size], self._buf[size:]
        return out


def tarinfo_for(entry: Entry) -> tarfile.TarInfo:
    """The tar header of ``entry``, with fixed mtime and no user or group names."""
    info = tarfile.TarInfo(entry.tar_name)
    info.type = _TAR_TYPES[entry.kind]
    info.mode = entry.mode
    info.uid = entry.uid
    info.gid = entry.gid
    info.uname = ""
    info.gname = ""
    info.mtime = EPOCH
    info.size = entry.size
    if entry.kind == HARDLINK:
        info.linkname = entry.target.lstrip("/")
    elif entry.kind == SYMLINK:
        info.linkname = entry.target
    elif entry.kind in (CHAR, BLOCK):
        info.devmajor = entry.devmajor
        info.devminor = entry.devminor
    if entry.xattrs:
        info.pax_headers = {f"SCHILY.xattr.{name}": value.decode("utf-8")
                            for name, value in entry.xattrs}
    return info


def _content_reader(entry: Entry) -> BinaryIO | _RandomReader:
    if isinstance(entry.data, RandomContent):
        return _RandomReader(entry.data)
    return io.BytesIO(entry.data)


def write_layer(layer: Layer, out: IO[bytes], *, compress: bool = True) -> LayerInfo:
    """Write ``layer`` to ``out`` as a gzip tar blob (or a plain tar when ``compress`` is
    false) and return its digests and sizes.

    Raises ValueError if an entry cannot be written (for example a non-UTF-8 xattr value).
    """
    sink = _HashingSink(out, layer.compresslevel if compress else None)
    # tarfile only needs write() and tell() from its file object.
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        written: dict[str, Entry] = {}
        for entry in layer.entries:
            info = tarinfo_for(entry)
            target = written.get(entry.target) if entry.kind == HARDLINK else None
            if target is not None:
                # As real tar writers do, a hard link's header repeats its target's metadata;
                # unpackers apply it to the shared inode.
                info.mode, info.uid, info.gid = target.mode, target.uid, target.gid
            written[entry.path] = entry
            tar.addfile(info, _content_reader(entry) if entry.kind == FILE else None)
    sink.finish()
    diff_id = "sha256:" + sink.diff.hexdigest()
    if compress:
        return LayerInfo("sha256:" + sink.blob.hexdigest(), sink.blob_size,
                         MEDIA_OCI_LAYER_GZIP, diff_id, sink.raw_size)
    return LayerInfo(diff_id, sink.raw_size, MEDIA_DOCKER_LAYER_TAR, diff_id, sink.raw_size)


def layer_blob(layer: Layer, *, compress: bool = True) -> tuple[bytes, LayerInfo]:
    """Build ``layer`` in memory: the blob bytes and their :class:`LayerInfo`."""
    buf = io.BytesIO()
    info = write_layer(layer, buf, compress=compress)
    return buf.getvalue(), info
