"""Container records: the configuration of a container, independent of whether it runs."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ctrpy import fieldmask, filters, identifiers
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound
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

    def __init__(self, db: Database) -> None:
        self.db = db

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
        namespace = current_namespace()
        validate(container)
        stamp = now_ns()
        with self.db.transaction() as conn:
            ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    f"INSERT INTO containers ({_COLUMNS}, namespace) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        container.id,
                        # containerd stores no label with an empty value (and leaves it out of
                        # its reply): an empty value is the same as no label.
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
                        namespace,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'container "{container.id}"') from None
            # containerd meets an empty label key when it writes the labels, after it found
            # the id free: AlreadyExists wins over it. Raising here rolls the insert back.
            validate_labels({k: v for k, v in container.labels.items() if v})
            return self._get(conn, namespace, container.id)

    def update(self, update: Container, paths: Sequence[str]) -> Container:
        """Apply the masked fields of ``update``; no mask replaces the replaceable fields."""
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
            return self._get(conn, namespace, update.id)

    def delete(self, container_id: str) -> None:
        namespace = current_namespace()
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM containers WHERE namespace = ? AND id = ?", (namespace, container_id)
            )
            if cursor.rowcount == 0:
                raise NotFound(f'container "{container_id}" in namespace "{namespace}"')
