"""Progress for people: a one-line bar on stderr (only when stderr is a terminal), and the
human spellings of sizes and ages that ctr prints."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ctrpy.images.model import Image

_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def human_bytes(size: float) -> str:
    """Binary units with one decimal, as ctr's ``images ls`` shows sizes (``1009.6 KiB``)."""
    unit = 0
    while size >= 1024 and unit < len(_BINARY) - 1:
        size /= 1024
        unit += 1
    return f"{size:.1f} {_BINARY[unit]}"


def human_size(size: float) -> str:
    """Decimal units, four significant digits, as ctr's ``content ls`` shows them (``2.028MB``)."""
    unit = 0
    while size >= 1000 and unit < len(_DECIMAL) - 1:
        size /= 1000
        unit += 1
    return f"{size:.4g}{_DECIMAL[unit]}"


def human_duration(seconds: float) -> str:
    """An age in words (``Less than a second``, ``3 minutes``, ``About an hour``...)."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = whole // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


class Bar:
    """``label [#######.......]  45%  12.3 MiB/27.0 MiB`` redrawn in place on a terminal.

    Does nothing at all when ``stream`` is not a terminal, so scripts and logs stay clean.
    Redraws at most ten times a second.
    """

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = self.stream.isatty()
        self._drawn = False
        self._last = 0.0
        self._line = ""

    def update(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._drawn and now - self._last < 0.1 and (total is None or done < total):
            return
        self._last = now
        if total:
            fraction = min(done / total, 1.0)
            filled = int(fraction * self.width)
            line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {int(fraction * 100):3d}% "
                    f"{human_bytes(done)}/{human_bytes(total)}")
        else:
            line = f"{self.label} {human_bytes(done)}"
        pad = " " * max(0, len(self._line) - len(line))
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._line = line
        self._drawn = True

    def finish(self) -> None:
        """End the bar's line (if one was drawn)."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class ImportProgress:
    """The CLI's :class:`ctrpy.images.Reporter`: a bar while the archive is read, then ctr's
    ``unpacking NAME (DIGEST)...done`` lines on stdout."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.bar = Bar("importing", stream)
        self.quiet = quiet

    def read(self, done: int, total: int | None) -> None:
        self.bar.update(done, total)

    def unpacking(self, image: Image) -> None:
        self.bar.finish()
        if not self.quiet:
            sys.stdout.write(f"unpacking {image.name} ({image.target.digest})...")
            sys.stdout.flush()

    def unpacked(self, image: Image, chain_id: str) -> None:
        if not self.quiet:
            sys.stdout.write("done\n")
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.finish()
