"""Update masks (``google.protobuf.FieldMask``) as containerd's Update calls read them.

A path names a top-level field (``labels``, ``image``, ``target``...) or, for map fields, one
key of the map: ``labels.<key>``. The key may itself hold dots and slashes
(``labels.containerd.io/gc.ref.content.l.0``), so a path splits on its first dot only.

Rules, as containerd applies them:

- An empty mask replaces every mutable field with the request's value.
- ``labels`` replaces the whole map; ``labels.<key>`` copies that one key from the request,
  and deletes it when the request does not carry it.
- An empty value is never stored: containerd drops labels set to ``""``, which is how clients
  delete one.
- Fields not named in a non-empty mask keep their stored value, whatever junk the request
  carries in them (ctr sends ``kind=COMMITTED`` on snapshot updates, an empty ``runtime`` on
  container updates).
- A path naming a field that cannot change is an InvalidArgument, with containerd's message.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from ctrpy.errors import InvalidArgument

V = TypeVar("V")


def split_path(path: str) -> tuple[str, str | None]:
    """Split a mask path on its first dot: ``"labels.a.b/c"`` -> ``("labels", "a.b/c")``.

    A path without a dot gives ``(path, None)``; ``"labels."`` gives ``("labels", "")``.
    """
    head, dot, rest = path.partition(".")
    return (head, rest) if dot else (head, None)


def apply_map(
    current: Mapping[str, V],
    update: Mapping[str, V],
    paths: Sequence[str],
    *,
    field: str = "labels",
) -> dict[str, V]:
    """The map field ``field`` after applying the mask ``paths``.

    An empty mask, or the path ``field`` itself, replaces the whole map with ``update``;
    ``field.<key>`` sets that key from ``update`` or deletes it when ``update`` lacks it.
    Paths are applied in order; paths naming other fields are ignored (validate them with
    :func:`validate_paths`). Neither argument is modified.
    """
    if not paths:
        return dict(update)
    result = dict(current)
    for path in paths:
        head, key = split_path(path)
        if head != field:
            continue
        if key is None:
            result = dict(update)
        elif key in update:
            result[key] = update[key]
        else:
            result.pop(key, None)
    return result


def apply_labels(
    current: Mapping[str, str], update: Mapping[str, str], paths: Sequence[str]
) -> dict[str, str]:
    """The labels after an update with mask ``paths`` (see :func:`apply_map`).

    Labels whose value ends up empty are dropped, as containerd never stores them.
    """
    merged = apply_map(current, update, paths, field="labels")
    return {k: v for k, v in merged.items() if v != ""}


def _go_quote(text: str) -> str:
    """Roughly Go's %q, which containerd's messages use."""
    return json.dumps(text, ensure_ascii=False)


def validate_paths(
    paths: Iterable[str],
    *,
    fields: Collection[str],
    maps: Collection[str] = ("labels",),
    kind: str = "",
    name: str | None = None,
) -> None:
    """Check that every mask path names something the object allows to change.

    ``fields`` are the top-level paths allowed whole (``labels``, ``image``...); ``maps`` are
    the map fields that also accept ``<field>.<key>`` with a non-empty key. Raises
    InvalidArgument with containerd's wording, ``cannot update "<path>" field on <kind>
    "<name>"``; ``kind`` may be empty (containerd names only the container id), and without a
    ``name`` the ``on ...`` part is left out (as for namespaces).
    """
    for path in paths:
        head, key = split_path(path)
        if key is None and head in fields:
            continue
        if key and head in maps:
            continue
        message = f"cannot update {_go_quote(path)} field"
        if name is not None:
            message += f" on {kind + ' ' if kind else ''}{_go_quote(name)}"
        raise InvalidArgument(message)


@dataclass(frozen=True)
class MaskRules:
    """Which mask paths an object kind accepts, and how its errors name it."""

    kind: str
    fields: frozenset[str]
    maps: frozenset[str] = frozenset({"labels"})
    named: bool = True  # False: errors leave out `on <kind> "<name>"`

    def validate(self, paths: Iterable[str], name: str) -> None:
        """:func:`validate_paths` for this kind; raises InvalidArgument."""
        validate_paths(
            paths,
            fields=self.fields,
            maps=self.maps,
            kind=self.kind,
            name=name if self.named else None,
        )


# What containerd 1.6 lets each Update call change.
CONTAINER: Final = MaskRules(
    "",
    frozenset({"labels", "spec", "extensions", "image", "snapshotkey"}),
    frozenset({"labels", "extensions"}),
)
IMAGE: Final = MaskRules(
    "image", frozenset({"labels", "target", "annotations"}), frozenset({"labels", "annotations"})
)
CONTENT: Final = MaskRules("content info", frozenset({"labels"}))
SNAPSHOT: Final = MaskRules("snapshot", frozenset({"labels"}))
# Namespaces.Update accepts only per-key label paths; a bare "labels" is refused.
NAMESPACE: Final = MaskRules("namespace", frozenset(), named=False)
