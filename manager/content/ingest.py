"""Ingests on disk: where unfinished writes live until they are committed or aborted.

Layout under the content root::

    ingest/<hex>/          one ingest; <hex> is the sha256 of the ref, so any ref string is safe
        ref                the ref, UTF-8
        data               the bytes written so far; its size is the offset to resume from
        startedat          when the ingest began, decimal nanoseconds since the epoch
        updatedat          last write, same format (written on close; data's mtime may be newer)
        total              the size the client announced (absent when unknown)
        expected           the digest the client announced (absent when unknown)
    ingest/.tmp-<random>/  an ingest being created; renamed to <hex> once its files exist
    ingest/.trash-<random>/  an ingest being removed; renamed away first, then deleted

Creating in a temporary directory and renaming means an ``<hex>`` directory always starts out
complete. Small metadata files are replaced atomically (write ``<name>.tmp``, rename) but not
fsynced: an ingest is a resumable convenience, not a promise, and after a power loss a damaged
one is detected (:class:`Broken`) and started afresh. Only commits are made durable.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from pathlib import Path

from ctrpy.errors import InvalidArgument, Unavailable

from . import digests
from .model import IngestStatus, ns_to_datetime

#: Longest ref accepted, in UTF-8 bytes (containerd sets none; namespaced refs stay far below).
MAX_REF_BYTES = 4096

TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
META_TEMP_SUFFIX = ".tmp"

# Temporary directories this process is filling right now; cleanup must leave them alone.
_inflight: set[str] = set()
_inflight_lock = threading.Lock()


class Broken(Exception):
    """An ingest directory that cannot be resumed (missing ``ref`` or ``data``, or mismatched)."""


@dataclasses.dataclass
class State:
    """What an ingest directory says about itself; times are nanoseconds since the epoch."""

    ref: str
    offset: int
    total: int
    expected: str
    started_ns: int
    updated_ns: int

    def status(self) -> IngestStatus:
        """The public view of this state."""
        return IngestStatus(
            ref=self.ref,
            offset=self.offset,
            total=self.total,
            expected=self.expected,
            started_at=ns_to_datetime(self.started_ns),
            updated_at=ns_to_datetime(self.updated_ns),
        )


def validate_ref(ref: str) -> str:
    """Return ``ref`` if it can name an ingest; raise InvalidArgument otherwise.

    A ref is any non-empty string without NUL characters and at most :data:`MAX_REF_BYTES` bytes
    of UTF-8. It never becomes a path itself (the directory is named by its hash).
    """
    if not ref:
        raise InvalidArgument("ref must not be empty")
    if "\x00" in ref:
        raise InvalidArgument("ref must not contain NUL characters")
    try:
        size = len(ref.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgument("ref must be valid unicode text") from None
    if size > MAX_REF_BYTES:
        raise InvalidArgument(f"ref is longer than {MAX_REF_BYTES} bytes")
    return ref


def dirname_for(ref: str) -> str:
    """The ingest directory name of ``ref``: the hex sha256 of its UTF-8 bytes."""
    return digests.split(digests.from_bytes(ref.encode("utf-8")))[1]


def is_temp(name: str) -> bool:
    """Whether an entry of ``ingest/`` is a temporary directory rather than an ingest."""
    return name.startswith((TEMP_PREFIX, TRASH_PREFIX))


def is_inflight(path: Path) -> bool:
    """Whether this process is still filling the temporary directory ``path``."""
    with _inflight_lock:
        return str(path) in _inflight


def load(path: Path, ref: str | None = None) -> State:
    """Read the ingest directory ``path``; raise :class:`Broken` if it cannot be resumed.

    The ``ref`` and ``data`` files are required, and the ref must hash to the directory's name
    (and equal ``ref`` when given). Damaged optional files fall back: times to the data file's
    modification time, ``total`` to 0, ``expected`` to "".
    """
    try:
        stored_ref = (path / "ref").read_bytes().decode("utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise Broken("missing ref file") from None
    except UnicodeDecodeError:
        raise Broken("ref file is not UTF-8") from None
    if not stored_ref or dirname_for(stored_ref) != path.name:
        raise Broken("ref file does not match the directory name")
    if ref is not None and stored_ref != ref:
        raise Broken("ref file does not match the ref")
    try:
        st = os.stat(path / "data")
    except FileNotFoundError:
        raise Broken("missing data file") from None
    started = _read_int(path / "startedat", st.st_mtime_ns)
    updated = max(_read_int(path / "updatedat", started), st.st_mtime_ns)
    expected = _read_text(path / "expected")
    if expected:
        try:
            digests.validate(expected)
        except InvalidArgument:
            expected = ""
    return State(
        ref=stored_ref,
        offset=st.st_size,
        total=max(_read_int(path / "total", 0), 0),
        expected=expected,
        started_ns=started,
        updated_ns=updated,
    )


def create(root: Path, ref: str, total: int, expected: str) -> State:
    """Create the ingest for ``ref`` under ``root`` (which must not have it) and return its state.

    Raises Unavailable if the directory appeared meanwhile (another process writing the ref).
    """
    now = time.time_ns()
    # os.urandom(8).hex() is secrets.token_hex(8); `secrets` imports hmac and with it OpenSSL's
    # libcrypto (3.5 MiB resident), which an idle daemon otherwise does without.
    tmp = Path(root / f"{TEMP_PREFIX}{os.urandom(8).hex()}")
    with _inflight_lock:
        _inflight.add(str(tmp))
    try:
        tmp.mkdir()
        (tmp / "ref").write_bytes(ref.encode("utf-8"))
        write_meta(tmp, "startedat", str(now))
        write_meta(tmp, "updatedat", str(now))
        if total > 0:
            write_meta(tmp, "total", str(total))
        if expected:
            write_meta(tmp, "expected", expected)
        (tmp / "data").touch()
        try:
            os.rename(tmp, root / dirname_for(ref))
        except OSError:  # ENOTEMPTY/EEXIST: someone else created it first
            raise Unavailable(f"ref {ref} locked") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        with _inflight_lock:
            _inflight.discard(str(tmp))
    return State(ref, 0, max(total, 0), expected, now, now)


def write_meta(path: Path, name: str, text: str) -> None:
    """Replace the small file ``path/name`` atomically (no fsync: see the module docstring)."""
    tmp = path / (name + META_TEMP_SUFFIX)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path / name)


def remove(path: Path) -> None:
    """Delete an ingest directory: rename it aside first, so that a crash half-way through
    leaves a temporary directory, never a half-deleted ingest. FileNotFoundError if absent."""
    trash = path.parent / f"{TRASH_PREFIX}{os.urandom(8).hex()}"
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return ""


def _read_int(path: Path, default: int) -> int:
    try:
        return int(_read_text(path))
    except ValueError:
        return default
