"""The bounds on one layer applied, apart from the code that applies it.

The composition root and the transfer service hold a :class:`Limits` from start-up; the code
that enforces them (:mod:`.apply`, with ``tarfile`` and the decompressors) is imported at the
first layer applied, so an idle daemon does not carry it (see the package's ``__init__``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds on one layer: uncompressed bytes, and tar entries (``None``: no bound)."""

    max_uncompressed_bytes: int | None = None
    max_entries: int | None = None


NO_LIMITS = Limits()
