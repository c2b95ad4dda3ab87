"""What ``ctrpy images pull`` (and ``push``) shows while the daemon works.

On a terminal: one line per blob, redrawn in place (at most ten times a second), each with a
bar while it downloads, as ctr 2.x shows a pull. Elsewhere (a pipe, a log): one line per blob
when it is done with (downloaded, already there, unpacked), so that scripts see plain lines.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from ctrpy.images.transfer import Progress

from .progress import human_bytes

#: Events that end a blob's download (the last word on it unless it is unpacked after).
DONE_EVENTS = frozenset({"complete", "already exists", "extracted", "mounted"})
BAR_WIDTH = 20


@dataclass
class _Row:
    name: str
    event: str
    done: int
    total: int


def short(name: str) -> str:
    """``sha256:0123456789ab`` for a digest; anything else as it is."""
    algorithm, _, hexdigits = name.partition(":")
    return f"{algorithm}:{hexdigits[:12]}" if hexdigits and len(hexdigits) > 12 else name


class PullProgress:
    """Receives :class:`Progress` events (from the stream's thread) and shows them."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.terminal = self.stream.isatty()
        self.quiet = quiet
        self._rows: dict[str, _Row] = {}
        self._lines_drawn = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: Progress) -> None:
        if self.quiet:
            return
        with self._lock:
            if self.terminal:
                self._track(event)
                self._draw(force=event.event in DONE_EVENTS)
            else:
                self._line(event)

    def _track(self, event: Progress) -> None:
        row = self._rows.get(event.name)
        if row is None:
            row = self._rows[event.name] = _Row(event.name, event.event, event.progress, event.total)
        row.event = event.event
        row.done = max(row.done, event.progress) if event.event == "downloading" else event.progress
        row.total = event.total or row.total

    def _line(self, event: Progress) -> None:
        if event.event in ("resolved", "saved", "pushed"):
            self.stream.write(f"{event.event} {event.name}\n")
        elif event.event in DONE_EVENTS and event.digest:
            size = f" {human_bytes(event.total)}" if event.total else ""
            self.stream.write(f"{short(event.name)}: {event.event}{size}\n")
        else:
            return
        self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        out = []
        if self._lines_drawn:
            out.append(f"\x1b[{self._lines_drawn}F")  # back to the first line drawn
        for row in self._rows.values():
            text = f"{short(row.name):<20} {row.event:<15}"
            if row.total and row.event == "downloading":
                filled = int(min(row.done / row.total, 1.0) * BAR_WIDTH)
                text += f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {human_bytes(row.done)}/{human_bytes(row.total)}"
            elif row.total:
                text += f" {human_bytes(row.total)}"
            out.append(text + "\x1b[K\n")
        self._lines_drawn = len(self._rows)
        self.stream.write("".join(out))
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state."""
        with self._lock:
            if self.terminal and self._rows:
                self._draw(force=True)
