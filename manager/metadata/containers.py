"""Container records: the configuration of a container, independent of whether it runs.

Each row also holds the record serialized as the API's ``Container`` message (its ``message``
column), made at write time by the encoder the store is given: Get and List answer with those
bytes, so a List of thousands decodes and encodes nothing, and its filters run on the columns
(id, image, runtime name, snapshotter, labels) before any message is touched. The encoder is
injected because the wire format belongs to the servicers, not to the store. Rows written
before the column existed (or by an older encoder: clear the column in a migration when the
encoding changes) are filled when the store is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from ctrpy import fieldmask, filters, identifiers
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted
from ctrpy.records import AnyValue, Container, Runtime

from .db import Database
from .rows import (
    current_namespace,
    dump_any,
    dump_labels,
    ensure_namespace,
    load_any,
    load_labels,
    now_ns,
    to_datetime,
    validate_label_sizes,
    validate_labels,
)

_COLUMNS = (
    "id, labels, image, runtime_name, runtime_options_type, runtime_options, spec_type, spec,"
    " snapshotter, snapshot_key, extensions, created_at, updated_at"
)

# The columns a filter can see (filters.container_adaptor), and the stored message.
_LISTED = "id, image, runtime_name, snapshotter, labels, message"

Encoder = Callable[[Container], bytes]
"""Serializes a container record as the API message that Get and List answer with."""

CACHE_BYTES = 4 * 1024 * 1024
"""At most this many bytes of messages are kept in memory for Get (about 9,000 of the size ctr
makes; CRI containers' specs are larger). Past it, Get reads the database."""

# The fields a full replace (an update with no mask) may change; the rest are immutable.
_REPLACEABLE = ("labels", "spec", "extensions", "image", "snapshotkey")


def _dump_extensions(extensions: Mapping[str, AnyValue]) -> str:
    return json.dumps({key: dump_any(value) for key, value in sorted(extensions.items())})


def _load_extensions(text: str) -> Mapping[str, AnyValue]:
    loaded = {key: load_any(value) for key, value in json.loads(text).items()}
    return MappingProxyType({key: value for key, value in loaded.items() if value is not None})


def _any(type_url: object, value: object) -> AnyValue | None:
    if type_url is None:
        return None
    return AnyValue(type_url=str(type_url), value=bytes(value))  # type: ignore[call-overload]


def _any_columns(value: AnyValue | None) -> tuple[str | None, bytes | None]:
    return (None, None) if value is None else (value.type_url, value.value)


def _from_row(row: tuple[object, ...]) -> Container:
    (cid, labels, image, runtime_name, options_type, options, spec_type, spec, snapshotter,
     snapshot_key, extensions, created_at, updated_at) = row
    return Container(
        id=str(cid),
        labels=load_labels(str(labels)),
        image=str(image),
        runtime=Runtime(name=str(runtime_name), options=_any(options_type, options)),
        spec=_any(spec_type, spec),
        snapshotter=str(snapshotter),
        snapshot_key=str(snapshot_key),
        extensions=_load_extensions(str(extensions)),
        created_at=to_datetime(created_at),  # type: ignore[arg-type]
        updated_at=to_datetime(updated_at),  # type: ignore[arg-type]
    )


def validate(container: Container) -> None:
    """containerd's checks on a container record (core/metadata/containers.go)."""
    identifiers.validate(container.id)
    # Sizes here; an empty key only after the existence check (see ContainerStore.create).
    validate_label_sizes(container.labels)
    for key in container.extensions:
        if not key:
            raise InvalidArgument("extension keys must not be zero-length")
    if not container.runtime.name:
        raise InvalidArgument("must specify a runtime name")
    if container.spec is None:
        raise InvalidArgument("spec must not be nil")
    if container.snapshot_key and not container.snapshotter:
        raise InvalidArgument("snapshot key must not be set without snapshotter")


class ContainerStore:
    """Container records in the call's namespace. Methods run on the database thread."""

    def __init__(self, db: Database, encode: Encoder, cache_bytes: int = CACHE_BYTES) -> None:
        self.db, self.encode = db, encode
        # (namespace, id) -> the stored message, for Get without a hop to the database thread.
        # Written only on the database thread, after a commit (or by a read there, which the
        # thread orders against every write); read from any thread (:meth:`cached_message`).
        self._cache: dict[tuple[str, str], bytes] = {}
        self._cache_size, self._cache_limit = 0, cache_bytes
        db.call(self._fill_messages)

    def _remember(self, namespace: str, container_id: str, message: bytes) -> None:
        key = (namespace, container_id)
        old = self._cache.get(key)
        if old is None and self._cache_size + len(message) > self._cache_limit:
            return  # full: this one is read from the database
        self._cache[key] = message
        self._cache_size += len(message) - (len(old) if old is not None else 0)

    def _forget(self, namespace: str, container_id: str) -> None:
        old = self._cache.pop((namespace, container_id), None)
        if old is not None:
            self._cache_size -= len(old)

    def cached_message(self, container_id: str) -> bytes | None:
        """The stored message of a container, if the cache holds it; safe on any thread.

        None means "ask :meth:`get_message`", not "no such container".
        """
        return self._cache.get((current_namespace(), container_id))

    def _fill_messages(self) -> int:
        """Store the message of every row that lacks one (rows of an older ctrpyd); how many.

        On a full disk the rows stay as they are: reads encode such a row on the fly.
        """
        query = f"SELECT namespace, {_COLUMNS} FROM containers WHERE message IS NULL"
        if self.db.conn.execute(query + " LIMIT 1").fetchone() is None:
            return 0
        with contextlib.suppress(ResourceExhausted), self.db.transaction() as conn:
            rows = conn.execute(query).fetchall()
            conn.executemany(
                "UPDATE containers SET message = ? WHERE namespace = ? AND id = ?",
                [(self.encode(_from_row(row[1:])), row[0], row[1]) for row in rows],
            )
            return len(rows)
        return 0

    def _get(self, conn: sqlite3.Connection, namespace: str, container_id: str) -> Container:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?",
            (namespace, container_id),
        ).fetchone()
        if row is None:
            raise NotFound(f'container "{container_id}" in namespace "{namespace}"')
        return _from_row(row)

    def get(self, container_id: str) -> Container:
        # Lookups do not validate the id (nor do update and delete): containerd answers
        # NotFound for an id that could never have been created, and so does ctrpyd. The id
        # only ever reaches the database as a parameter.
        namespace = current_namespace()
        return self._get(self.db.conn, namespace, container_id)

    def get_message(self, container_id: str) -> bytes:
        """The container as its serialized API message (see the module docstring)."""
        namespace = current_namespace()
        row = self.db.conn.execute(
            "SELECT message FROM containers WHERE namespace = ? AND id = ?", (namespace, container_id)
        ).fetchone()
        if row is None:
            raise NotFound(f'container "{container_id}" in namespace "{namespace}"')
        if row[0] is None:  # written behind the store's back since it was built
            return self.encode(self._get(self.db.conn, namespace, container_id))
        message = bytes(row[0])
        self._remember(namespace, container_id, message)
        return message

    def list_messages(self, filter_expressions: Sequence[str] = ()) -> list[bytes]:
        """The serialized API messages of the matching containers, in id order.

        Filters see only the columns (labels are parsed only when there is a filter): no
        message is decoded.
        """
        namespace = current_namespace()
        match = filters.parse_all(filter_expressions)
        rows = self.db.conn.execute(
            f"SELECT {_LISTED} FROM containers WHERE namespace = ? ORDER BY id", (namespace,)
        ).fetchall()
        if match is not filters.ALWAYS:
            rows = [
                row
                for row in rows
                if match.match(filters.container_adaptor(row[0], row[1], row[2], row[3], load_labels(row[4])))
            ]
        return [
            self.encode(self._get(self.db.conn, namespace, row[0])) if row[5] is None else row[5]
            for row in rows
        ]

    def list(self, filter_expressions: Sequence[str] = ()) -> list[Container]:
        namespace = current_namespace()
        match = filters.parse_all(filter_expressions)
        rows = self.db.conn.execute(
            f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? ORDER BY id", (namespace,)
        )
        found = [_from_row(row) for row in rows]
        if not any(filter_expressions):
            return found  # no filter: skip building an adaptor per row
        return [
            c
            for c in found
            if match.match(
                filters.container_adaptor(c.id, c.image, c.runtime.name, c.snapshotter, c.labels)
            )
        ]

    def create(self, container: Container) -> Container:
        return self.create_with_message(container)[0]

    def create_with_message(self, container: Container) -> tuple[Container, bytes]:
        """Create the record; return it and the message stored with it (what Create answers)."""
        namespace = current_namespace()
        validate(container)
        stamp = now_ns()
        row = (
            container.id,
            # containerd stores no label with an empty value (and leaves it out of its reply):
            # an empty value is the same as no label.
            dump_labels({k: v for k, v in container.labels.items() if v}),
            container.image,
            container.runtime.name,
            *_any_columns(container.runtime.options),
            *_any_columns(container.spec),
            container.snapshotter,
            container.snapshot_key,
            _dump_extensions(container.extensions),
            stamp,
            stamp,
        )
        # The record as reading the row back would give it, without reading it back.
        created = _from_row(row)
        message = self.encode(created)
        with self.db.transaction() as conn:
            ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    f"INSERT INTO containers ({_COLUMNS}, namespace, message)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (*row, namespace, message),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'container "{container.id}"') from None
            # containerd meets an empty label key when it writes the labels, after it found
            # the id free: AlreadyExists wins over it. Raising here rolls the insert back.
            validate_labels({k: v for k, v in container.labels.items() if v})
        self._remember(namespace, container.id, message)  # committed
        return created, message

    def update(self, update: Container, paths: Sequence[str]) -> Container:
        """Apply the masked fields of ``update``; no mask replaces the replaceable fields."""
        return self.update_with_message(update, paths)[0]

    def update_with_message(self, update: Container, paths: Sequence[str]) -> tuple[Container, bytes]:
        """:meth:`update`, returning the updated record and the message stored with it."""
        namespace = current_namespace()
        if not update.id:
            raise InvalidArgument("Container.ID required")
        with self.db.transaction() as conn:
            current = self._get(conn, namespace, update.id)
            if not paths:
                if update.snapshotter != current.snapshotter:
                    raise InvalidArgument("container.Snapshotter field is immutable")
                if update.runtime.name != current.runtime.name:
                    raise InvalidArgument("container.Runtime.Name field is immutable")
                paths = _REPLACEABLE
            changed = current
            for path in paths:
                field, key = fieldmask.split_path(path)
                if field == "labels":
                    labels = fieldmask.apply_labels(changed.labels, update.labels, [path])
                    changed = dataclasses.replace(changed, labels=MappingProxyType(labels))
                elif field == "extensions":
                    extensions = dict(changed.extensions)
                    for name in [key] if key is not None else list(set(extensions) | set(update.extensions)):
                        if name in update.extensions:
                            extensions[name] = update.extensions[name]
                        else:
                            extensions.pop(name, None)
                    changed = dataclasses.replace(changed, extensions=MappingProxyType(extensions))
                elif path == "spec":
                    changed = dataclasses.replace(changed, spec=update.spec)
                elif path == "image":
                    changed = dataclasses.replace(changed, image=update.image)
                elif path == "snapshotkey":
                    changed = dataclasses.replace(changed, snapshot_key=update.snapshot_key)
                else:
                    raise InvalidArgument(f'cannot update "{path}" field on "{update.id}"')
            validate(changed)
            validate_labels(changed.labels)
            conn.execute(
                "UPDATE containers SET labels = ?, image = ?, spec_type = ?, spec = ?, snapshot_key = ?,"
                " extensions = ?, updated_at = ? WHERE namespace = ? AND id = ?",
                (
                    dump_labels(changed.labels),
                    changed.image,
                    *_any_columns(changed.spec),
                    changed.snapshot_key,
                    _dump_extensions(changed.extensions),
                    now_ns(),
                    namespace,
                    update.id,
                ),
            )
            updated = self._get(conn, namespace, update.id)
            message = self.encode(updated)
            conn.execute(
                "UPDATE containers SET message = ? WHERE namespace = ? AND id = ?", (message, namespace, update.id)
            )
        self._remember(namespace, update.id, message)  # committed
        return updated, message

    def delete(self, container_id: str) -> None:
        namespace = current_namespace()
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM containers WHERE namespace = ? AND id = ?", (namespace, container_id)
            )
            if cursor.rowcount == 0:
                raise NotFound(f'container "{container_id}" in namespace "{namespace}"')
        self._forget(namespace, container_id)  # committed
