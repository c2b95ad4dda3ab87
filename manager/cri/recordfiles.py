"""One JSON file per record, written durably, read back at start-up: what the CRI's pods and
containers remember across crashes.

:class:`RecordDir` keeps ``<directory>/<id>.json`` files and an in-memory copy of each (lists
and status calls read memory, never the disk). :meth:`RecordDir.put` writes a temporary file,
fsyncs it, renames it over the record and fsyncs the directory, so a record on disk is always
whole: the old one or the new one. A record's own files (a pod's hosts and resolv.conf, a
container's volumes) live in ``<directory>/<id>/``. Blocking file I/O: small and rare, so
callers run it in a thread or accept the few microseconds.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any, Generic, Protocol, Self, TypeVar

from ctrpy.errors import NotFound

__all__ = ["Record", "RecordDir", "decode_fields", "encode_fields"]


class Record(Protocol):
    """What a record type offers the directory: an id, a creation time to order by, JSON."""

    @property
    def id(self) -> str: ...

    @property
    def created_at_ns(self) -> int: ...

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Record)


def encode_fields(record: Any, kind: str, tuples: Sequence[str] = ()) -> dict[str, Any]:
    """A dataclass record as JSON: ``config`` (bytes) in base64, the ``tuples`` as lists, and
    ``kind`` naming the record's format."""
    doc = dataclasses.asdict(record)
    doc["config"] = base64.b64encode(record.config).decode()
    for name in tuples:
        doc[name] = list(getattr(record, name))
    doc["kind"] = kind
    return doc


def decode_fields(cls: type[Any], doc: dict[str, Any], tuples: Sequence[str] = ()) -> dict[str, Any]:
    """The constructor arguments of dataclass ``cls`` from :func:`encode_fields`' JSON; keys the
    class does not know (written by a newer ctrpyd) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in doc.items() if k in names}
    values["config"] = base64.b64decode(values.get("config", ""))
    for name in tuples:
        values[name] = tuple(values.get(name, ()))
    return values


class RecordDir(Generic[R]):
    """The records of one kind under ``directory``. ``noun`` names one in NotFound errors
    (``sandbox "id": not found``); ``parse`` turns a file's JSON back into a record."""

    noun = "record"

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._cache: dict[str, R] = {}

    @classmethod
    def at(cls, root: str | os.PathLike[str], *parts: str) -> Self:
        return cls(os.path.join(os.fspath(root), *parts))

    def parse(self, doc: dict[str, Any]) -> R:
        raise NotImplementedError

    def path(self, record_id: str) -> str:
        return os.path.join(self.directory, f"{record_id}.json")

    def files_dir(self, record_id: str) -> str:
        """The directory of the record's own files."""
        return os.path.join(self.directory, record_id)

    def load(self) -> list[R]:
        """Read every record (at start-up); files that do not parse are skipped and kept."""
        self._cache.clear()
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                with open(os.path.join(self.directory, name), "rb") as f:
                    record = self.parse(json.load(f))
            except (OSError, ValueError, TypeError):
                continue
            self._cache[record.id] = record
        return list(self._cache.values())

    def get(self, record_id: str) -> R:
        record = self._cache.get(record_id)
        if record is None:
            raise NotFound(f'{self.noun} "{record_id}"')
        return record

    def find(self, record_id: str) -> R | None:
        return self._cache.get(record_id)

    def all(self) -> list[R]:
        return sorted(self._cache.values(), key=lambda r: (r.created_at_ns, r.id))

    def put(self, record: R, *, durable: bool = True, remember: bool = True) -> R:
        """Write ``record`` durably (temporary file, fsync, rename, fsync of the directory).

        ``durable=False`` skips both fsyncs: the record is still whole on disk and survives a
        crash of ctrpyd (what ``write`` returned is in the kernel's cache), only a power cut
        may lose it, leaving the previous version. For the intent steps of a creation whose
        things a reboot removes anyway or the start-up reconcile sweeps without a record.
        Still blocking: the rename can wait on the journal of a busy disk. ``remember=False``
        leaves the in-memory copy as it was: the caller passes the record to :meth:`cache` once
        the change it records is complete.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        tmp = os.path.join(self.directory, f".{record.id}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, json.dumps(record.to_json(), sort_keys=True).encode())
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path(record.id))
        if durable:
            _fsync_dir(self.directory)
        if remember:
            self._cache[record.id] = record
        return record

    def cache(self, record: R) -> R:
        """Keep ``record`` in memory only: the next :meth:`put` writes it (for changes that are
        recomputed at start-up anyway)."""
        self._cache[record.id] = record
        return record

    def delete(self, record_id: str) -> None:
        """Forget a record (idempotent)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(record_id))
            _fsync_dir(self.directory)
        self._cache.pop(record_id, None)

    def stray_dirs(self) -> list[str]:
        """Record file directories no record claims (a crash before the first record)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [os.path.join(self.directory, n) for n in names
                if os.path.isdir(os.path.join(self.directory, n)) and n not in self._cache]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
