"""Image records: a name pointing at a target descriptor (a manifest or an index) in content."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from collections.abc import Sequence
from types import MappingProxyType

from ctrpy import fieldmask, filters
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound
from ctrpy.records import Descriptor, Image

from ..content import digests
from .db import Database
from .rows import (
    current_namespace,
    dump_labels,
    ensure_namespace,
    load_labels,
    now_ns,
    to_datetime,
    validate_label_sizes,
    validate_labels,
)

_COLUMNS = (
    "name, labels, target_media_type, target_digest, target_size, target_annotations,"
    " created_at, updated_at"
)
_DIGEST = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def _from_row(row: tuple[object, ...]) -> Image:
    name, labels, media_type, digest, size, annotations, created_at, updated_at = row
    return Image(
        name=str(name),
        labels=load_labels(str(labels)),
        target=Descriptor(
            media_type=str(media_type),
            digest=str(digest),
            size=int(size),  # type: ignore[call-overload]
            annotations=load_labels(str(annotations)),
        ),
        created_at=to_datetime(created_at),  # type: ignore[arg-type]
        updated_at=to_datetime(updated_at),  # type: ignore[arg-type]
    )


def validate(image: Image) -> None:
    """containerd's checks on an image record (core/metadata/images.go)."""
    if not image.name:
        raise InvalidArgument("Image.Name required")
    if "\x00" in image.name:
        raise InvalidArgument(f"image name {image.name!r} must not contain NUL")
    # Sizes here; an empty key only after the existence check (see ImageStore.create).
    validate_label_sizes(image.labels)
    if not image.target.media_type:
        raise InvalidArgument("Target.MediaType must be set")
    # containerd validates the digest for its algorithm (a sha256 has 64 hex characters).
    if not _DIGEST.match(image.target.digest):
        raise InvalidArgument(f'Target.Digest "{image.target.digest}" invalid: invalid checksum digest format')
    try:
        digests.validate(image.target.digest)
    except InvalidArgument as error:
        raise InvalidArgument(f'Target.Digest "{image.target.digest}" invalid: {error.subject}') from None
    if image.target.size < 0:
        raise InvalidArgument("image target size must not be negative")


class ImageStore:
    """Image records in the call's namespace. Methods run on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _get(self, conn: sqlite3.Connection, namespace: str, name: str) -> Image:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM images WHERE namespace = ? AND name = ?", (namespace, name)
        ).fetchone()
        if row is None:
            raise NotFound(f'image "{name}"')
        return _from_row(row)

    def get(self, name: str) -> Image:
        return self._get(self.db.conn, current_namespace(), name)

    def list(self, filter_expressions: Sequence[str] = ()) -> list[Image]:
        namespace = current_namespace()
        match = filters.parse_all(filter_expressions)
        rows = self.db.conn.execute(
            f"SELECT {_COLUMNS} FROM images WHERE namespace = ? ORDER BY name", (namespace,)
        )
        found = [_from_row(row) for row in rows]
        return [
            i
            for i in found
            if match.match(
                filters.image_adaptor(i.name, i.target.digest, i.target.media_type, i.labels)
            )
        ]

    def create(self, image: Image) -> Image:
        namespace = current_namespace()
        validate(image)
        stamp = now_ns()
        with self.db.transaction() as conn:
            ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    f"INSERT INTO images ({_COLUMNS}, namespace) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        image.name,
                        # As containerd: a label with an empty value is not stored.
                        dump_labels({k: v for k, v in image.labels.items() if v}),
                        image.target.media_type,
                        image.target.digest,
                        image.target.size,
                        dump_labels(image.target.annotations),
                        stamp,
                        stamp,
                        namespace,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'image "{image.name}"') from None
            validate_labels({k: v for k, v in image.labels.items() if v})  # an empty key, now (rollback)
            return self._get(conn, namespace, image.name)

    def update(self, update: Image, paths: Sequence[str]) -> Image:
        """Apply the masked fields of ``update``; no mask replaces labels and target."""
        namespace = current_namespace()
        if not update.name:
            raise InvalidArgument("Image.Name required")
        with self.db.transaction() as conn:
            current = self._get(conn, namespace, update.name)
            if not paths:
                changed = dataclasses.replace(current, labels=update.labels, target=update.target)
            else:
                changed = current
                for path in paths:
                    field, _ = fieldmask.split_path(path)
                    if field == "labels":
                        labels = fieldmask.apply_labels(changed.labels, update.labels, [path])
                        changed = dataclasses.replace(changed, labels=MappingProxyType(labels))
                    elif field == "annotations":
                        # The annotations of the target, addressed like labels.
                        annotations = fieldmask.apply_labels(
                            changed.target.annotations,
                            update.target.annotations,
                            ["labels" + path[len("annotations"):]],
                        )
                        target = dataclasses.replace(
                            changed.target, annotations=MappingProxyType(annotations)
                        )
                        changed = dataclasses.replace(changed, target=target)
                    elif path == "target":
                        # The target is replaced as a whole: a partial target is never valid.
                        changed = dataclasses.replace(changed, target=update.target)
                    else:
                        raise InvalidArgument(f'cannot update "{path}" field on image "{update.name}"')
            validate(changed)
            validate_labels(changed.labels)
            conn.execute(
                "UPDATE images SET labels = ?, target_media_type = ?, target_digest = ?,"
                " target_size = ?, target_annotations = ?, updated_at = ?"
                " WHERE namespace = ? AND name = ?",
                (
                    dump_labels(changed.labels),
                    changed.target.media_type,
                    changed.target.digest,
                    changed.target.size,
                    dump_labels(changed.target.annotations),
                    now_ns(),
                    namespace,
                    update.name,
                ),
            )
            return self._get(conn, namespace, update.name)

    def delete(self, name: str) -> None:
        namespace = current_namespace()
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM images WHERE namespace = ? AND name = ?", (namespace, name)
            )
            if cursor.rowcount == 0:
                raise NotFound(f'image "{name}"')
