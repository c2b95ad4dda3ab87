"""Container logs in the CRI format, written by the shim itself.

Kubernetes reads a container's output from a file the kubelet names, one record per line::

    <RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\\n

``F`` ends a line; ``P`` is a piece of a longer one (a line over ``max_line_size`` bytes, or
the unterminated tail a stream ends with). containerd's CRI plugin writes these records in the
daemon, from the FIFOs its shim fills; ctrpy's shim writes them directly, so that logs cost
ctrpyd nothing and keep being written while ctrpyd is down or restarting.

A client asks for it through the ordinary stdio fields of Tasks.Create (or Exec)::

    stdout = stderr = "ctrpy-crilog:///abs/path/to/container.log?max_line_size=16384"

``max_line_size`` is optional (default 16 KiB, containerd's ``max_container_log_line_size``);
0 or a negative value means no limit. The shim creates the file's parent directories (0755)
and opens the file with O_WRONLY|O_APPEND|O_CREAT, mode 0640, as containerd does. With a
terminal there is one stream, tagged ``stdout``. The shim's ReopenLog call closes and reopens
the file after the kubelet renamed it (log rotation, CRI's ReopenContainerLog).

How a stream becomes records mirrors containerd's ``redirectLogs`` (pkg/cri/io/logger.go):

- a line ends at ``\\n``; a ``\\r`` right before it is dropped too (``\\r\\n`` endings, and
  what a terminal writes); any other ``\\r`` is content;
- an empty line is a record with empty content (``... F \\n``);
- a line longer than ``max_line_size`` is cut into pieces of exactly ``max_line_size`` bytes,
  each a ``P`` record, and the rest (possibly exactly ``max_line_size`` bytes, never empty)
  is the ``F`` record; pieces are written as soon as they are known to be pieces;
- at end of stream, unterminated content is written as ``P`` records (containerd treats it as
  a partial line);
- content is bytes, passed through unchanged (no decoding).

Both streams' records go to one file in the order the shim reads them; each read's records
reach the file in one ``write`` with one timestamp (containerd stamps each record; the
difference is the few nanoseconds between records of one read). Timestamps are local time
formatted as Go's ``time.RFC3339Nano``: trailing zeros of the fraction trimmed (no fraction at
all for a whole second), ``Z`` for a zero offset, else ``+hh:mm``.

This module needs only the standard library and :mod:`ctrpy.errors`, so that ctrpyd (the CRI
layer) can build URIs with :func:`uri` without importing the shim's server code.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from ctrpy.errors import CtrpyError, InvalidArgument

log = logging.getLogger("ctrpy.shim")

SCHEME = "ctrpy-crilog"
DEFAULT_MAX_LINE_SIZE = 16 * 1024
LOG_MODE = 0o640
DIR_MODE = 0o755

STDOUT = b"stdout"
STDERR = b"stderr"
PARTIAL = b"P"
FULL = b"F"

Record = tuple[bytes, bytes]  # (tag, content)


@dataclass(frozen=True)
class Target:
    """Where a CRI log goes: an absolute file path and the longest line written whole."""

    path: str
    max_line_size: int = DEFAULT_MAX_LINE_SIZE


def is_uri(value: str) -> bool:
    """Whether a stdio field asks for a CRI log."""
    return value.startswith(f"{SCHEME}://")


def uri(path: str, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> str:
    """The stdio URI that makes the shim write a CRI log at ``path`` (absolute)."""
    if not os.path.isabs(path):
        raise InvalidArgument(f'CRI log path "{path}" is not absolute')
    return f"{SCHEME}://{quote(path)}?max_line_size={max_line_size}"


def parse_uri(value: str) -> Target:
    """The target a ``ctrpy-crilog://`` URI names; InvalidArgument when it is malformed."""
    parts = urlsplit(value)
    if parts.scheme != SCHEME:
        raise InvalidArgument(f'"{value}" is not a {SCHEME}:// URI')
    if parts.netloc:
        raise InvalidArgument(f'CRI log URI "{value}": the path must be absolute ({SCHEME}:///path)')
    path = unquote(parts.path)
    if not os.path.isabs(path) or path.endswith("/"):
        raise InvalidArgument(f'CRI log URI "{value}" names no absolute file path')
    max_line_size = DEFAULT_MAX_LINE_SIZE
    for key, text in parse_qsl(parts.query, keep_blank_values=True):
        if key != "max_line_size":
            raise InvalidArgument(f'CRI log URI "{value}": unknown parameter "{key}"')
        try:
            max_line_size = int(text)
        except ValueError:
            raise InvalidArgument(f'CRI log URI "{value}": max_line_size "{text}" is not a number') from None
    return Target(path, max_line_size)


# ---- timestamps ---------------------------------------------------------------------------


class Clock:
    """Formats wall-clock nanoseconds as Go's ``time.RFC3339Nano`` in local time.

    The date, time and zone of a second are computed once (a ``localtime`` call each), since a
    busy container writes many records per second.
    """

    def __init__(self) -> None:
        self._second = -1
        self._head = ""
        self._zone = ""

    def format(self, ns: int) -> bytes:
        """``2026-12-06T05:58:56.12345Z`` for ``ns`` nanoseconds since the epoch."""
        second, fraction = divmod(ns, 1_000_000_000)
        if second != self._second:
            tm = time.localtime(second)
            self._head = time.strftime("%Y-%m-%dT%H:%M:%S", tm)
            self._zone = _zone(tm.tm_gmtoff or 0)
            self._second = second
        if fraction:
            return f"{self._head}.{fraction:09d}".rstrip("0").encode() + self._zone.encode()
        return f"{self._head}{self._zone}".encode()

    def now(self) -> bytes:
        """The current time, formatted."""
        return self.format(time.time_ns())


def _zone(offset: int) -> str:
    if offset == 0:
        return "Z"
    sign = "+" if offset > 0 else "-"
    minutes = abs(offset) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def format_records(timestamp: bytes, stream: bytes, records: list[Record]) -> bytes:
    """The bytes of ``records`` of one stream, all with ``timestamp``."""
    head = timestamp + b" " + stream + b" "
    return b"".join(head + tag + b" " + content + b"\n" for tag, content in records)


# ---- lines --------------------------------------------------------------------------------


class LineSplitter:
    """Cuts one stream into CRI records (see the module docstring for the rules).

    :meth:`feed` takes bytes as they arrive and returns the records they complete;
    :meth:`finish` returns what is left at end of stream. At most ``max_line_size + 1`` bytes
    are held between calls (no bound when there is no limit, as in containerd).
    """

    def __init__(self, max_line_size: int = DEFAULT_MAX_LINE_SIZE) -> None:
        self.max_line_size = max(max_line_size, 0)
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[Record]:
        """Records completed by ``data`` (full lines, and pieces of an overlong one)."""
        records: list[Record] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            if self._pending:
                self._pending += data[start:end]
                line = bytes(self._pending)
                self._pending.clear()
            else:
                line = data[start:end]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._cut(line, records)
            start = end + 1
        self._pending += data[start:]
        self._cut_pending(records)
        return records

    def finish(self) -> list[Record]:
        """The unterminated rest of the stream as partial records (nothing when there is none)."""
        rest = bytes(self._pending)
        self._pending.clear()
        if not rest:
            return []
        size = self.max_line_size or len(rest)
        return [(PARTIAL, rest[i : i + size]) for i in range(0, len(rest), size)]

    def _cut(self, line: bytes, records: list[Record]) -> None:
        size = self.max_line_size
        if not size or len(line) <= size:
            records.append((FULL, line))
            return
        last = (len(line) - 1) // size * size  # the final piece: 1..size bytes
        records.extend((PARTIAL, line[i : i + size]) for i in range(0, last, size))
        records.append((FULL, line[last:]))

    def _cut_pending(self, records: list[Record]) -> None:
        """Write out pieces of an unterminated line once it is known to be too long.

        A trailing ``\\r`` does not count yet: with the ``\\n`` that may follow, it is no
        content (containerd's reader holds it back the same way).
        """
        size = self.max_line_size
        if not size:
            return
        pending = self._pending
        while len(pending) - int(pending.endswith(b"\r")) > size:
            records.append((PARTIAL, bytes(pending[:size])))
            del pending[:size]


# ---- the file -----------------------------------------------------------------------------


def open_log(path: str) -> int:
    """Open (creating it and its directories) a CRI log file for appending; CtrpyError on failure."""
    try:
        os.makedirs(os.path.dirname(path), mode=DIR_MODE, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, LOG_MODE)
    except OSError as exc:
        raise CtrpyError(f'failed to open the CRI log "{path}": {exc.strerror}') from None


class LogFile:
    """One open CRI log file, shared by the streams that write to it; reopened on rotation.

    Writes go straight to the file (a regular file: no waiting, no buffering in the shim), so
    ``crictl logs -f`` sees a record as soon as its line is complete. A write that fails (a
    full disk) loses those records and is reported once in the shim's log; the streams keep
    being read so that the container never blocks on its output, as in containerd.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = open_log(path)
        self._clock = Clock()
        self._failing = False

    def write(self, stream: bytes, records: list[Record]) -> None:
        """Append ``records`` of ``stream``, stamped now."""
        if not records or self._fd < 0:
            return
        data = memoryview(format_records(self._clock.now(), stream, records))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            if not self._failing:
                log.error("writing the CRI log %s failed: %s", self.path, exc)
            self._failing = True
            return
        self._failing = False

    def reopen(self) -> None:
        """Open the path again (the old file was renamed away) and close the old file; on
        failure the old file stays in use and CtrpyError is raised."""
        fd = open_log(self.path)
        old, self._fd = self._fd, fd
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        """Close the file; later writes are dropped."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
