"""SPDY/3's zlib dictionary and the per-direction header compression contexts.

SPDY/3 compresses every name/value header block with zlib primed with a fixed dictionary (spec
section 2.6.10.1), and keeps ONE compression context per direction for the whole connection: a
block is flushed with Z_SYNC_FLUSH, never finished, so later blocks refer back to earlier ones.
Decoding the blocks out of order, or with a fresh context per frame, fails. zlib checks the
dictionary's Adler-32 against the one the peer announces, so a wrong byte here is caught by the
first header block a real client sends.

The dictionary is written below as the spec lays it out: a list of common header names and
values, each preceded by its length as a 4-byte big-endian integer, followed by one run of status
codes, reason phrases, dates and content types without length prefixes.
"""

from __future__ import annotations

import zlib

_PREFIXED_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type",
    "date", "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent",
    "vary", "via", "warning", "www-authenticate", "method", "get", "status", "200 OK",
    "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)  # fmt: skip

_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information"
    "204 No Content"
    "301 Moved Permanently"
    "400 Bad Request"
    "401 Unauthorized"
    "403 Forbidden"
    "404 Not Found"
    "500 Internal Server Error"
    "501 Not Implemented"
    "503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
    "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch"
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _build() -> bytes:
    out = bytearray()
    for word in _PREFIXED_WORDS:
        out += len(word).to_bytes(4, "big") + word.encode("ascii")
    out += _TAIL.encode("ascii")
    return bytes(out)


HEADER_DICTIONARY: bytes = _build()
"""The 1423 bytes every SPDY/3 header compressor and decompressor is primed with."""

MAX_HEADER_BLOCK = 1 << 20
"""The most bytes one decompressed header block may grow to (a zlib bomb stops here)."""


class HeaderCompressor:
    """Compresses header blocks for one direction of one connection."""

    def __init__(self) -> None:
        # Level 9 like Go's spdystream; any level decodes the same.
        self._z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY,
                                   HEADER_DICTIONARY)  # fmt: skip

    def compress(self, block: bytes) -> bytes:
        """Return the compressed bytes of ``block``, sync-flushed so the peer can decode it now."""
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    """Decompresses the header blocks received on one connection, in order."""

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zlib.MAX_WBITS, HEADER_DICTIONARY)

    def decompress(self, data: bytes) -> bytes:
        """Return the block carried by ``data``.

        Raises ``ValueError`` when the bytes are not a valid continuation of the stream, when
        the block would exceed :data:`MAX_HEADER_BLOCK`, or when the peer ended the zlib stream
        (SPDY never does: later frames would have nothing to decode with).
        """
        try:
            out = self._z.decompress(data, MAX_HEADER_BLOCK + 1)
        except zlib.error as exc:
            raise ValueError(f"header block: {exc}") from exc
        if len(out) > MAX_HEADER_BLOCK or self._z.unconsumed_tail:
            raise ValueError("header block too large")
        if self._z.eof:
            raise ValueError("header block ended the zlib stream")
        return out
