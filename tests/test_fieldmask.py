"""Tests for ctrpy.fieldmask: update-mask paths as containerd applies them."""

from __future__ import annotations

import pytest

from ctrpy import fieldmask
from ctrpy.errors import InvalidArgument

GC = "containerd.io/gc.ref.content.l.0"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("labels", ("labels", None)),
        ("labels.a", ("labels", "a")),
        (f"labels.{GC}", ("labels", GC)),
        ("labels.a.b.c", ("labels", "a.b.c")),
        ("labels.", ("labels", "")),
        ("target", ("target", None)),
        ("", ("", None)),
        (".x", ("", "x")),
        ("labels.ünï/ç", ("labels", "ünï/ç")),
    ],
)
def test_split_path(path: str, expected: tuple[str, str | None]) -> None:
    assert fieldmask.split_path(path) == expected


CURRENT = {"keep": "1", "drop": "2", GC: "sha256:aa"}


@pytest.mark.parametrize(
    ("update", "paths", "expected"),
    [
        # An empty mask, or "labels", replaces everything.
        ({"new": "x"}, [], {"new": "x"}),
        ({}, [], {}),
        ({"new": "x"}, ["labels"], {"new": "x"}),
        ({}, ["labels"], {}),
        # One key: set it from the update...
        ({"new": "x", "keep": "ignored"}, ["labels.new"], {**CURRENT, "new": "x"}),
        ({"keep": "changed"}, ["labels.keep"], {**CURRENT, "keep": "changed"}),
        # ...or delete it when the update does not carry it, or carries it empty.
        ({}, ["labels.drop"], {"keep": "1", GC: "sha256:aa"}),
        ({"drop": ""}, ["labels.drop"], {"keep": "1", GC: "sha256:aa"}),
        ({}, ["labels.absent"], CURRENT),
        # Keys with dots and slashes.
        ({GC: "sha256:bb"}, [f"labels.{GC}"], {**CURRENT, GC: "sha256:bb"}),
        ({}, [f"labels.{GC}"], {"keep": "1", "drop": "2"}),
        ({"a.b": "v"}, ["labels.a.b"], {**CURRENT, "a.b": "v"}),
        # Several paths, in order.
        ({"x": "1", "y": "2"}, ["labels.x", "labels.y", "labels.drop"],
         {"keep": "1", GC: "sha256:aa", "x": "1", "y": "2"}),
        ({"x": "1"}, ["labels.q", "labels", "labels.keep"], {"x": "1"}),
        ({"x": "1"}, ["labels", "labels.keep"], {"x": "1"}),
        # Paths for other fields are not about labels.
        ({"x": "1"}, ["image", "spec"], CURRENT),
        ({"x": "1"}, ["labelsx", "annotations.x"], CURRENT),
        # Empty values never survive.
        ({"e": "", "f": "1"}, [], {"f": "1"}),
        ({"e": "", "f": "1"}, ["labels"], {"f": "1"}),
    ],
)  # fmt: skip
def test_apply_labels(
    update: dict[str, str], paths: list[str], expected: dict[str, str]
) -> None:
    before = dict(CURRENT)
    assert fieldmask.apply_labels(CURRENT, update, paths) == expected
    assert before == CURRENT


def test_apply_map_other_field_and_values() -> None:
    current = {"a": 1, "b": 2}
    assert fieldmask.apply_map(current, {"a": 5}, ["annotations.a"], field="annotations") == {
        "a": 5,
        "b": 2,
    }
    assert fieldmask.apply_map(current, {}, ["annotations.b"], field="annotations") == {"a": 1}
    assert fieldmask.apply_map(current, {"z": 0}, ["labels.a"], field="annotations") == current
    assert fieldmask.apply_map(current, {"z": 0}, [], field="annotations") == {"z": 0}
    # apply_map keeps empty values; only apply_labels drops them.
    assert fieldmask.apply_map({}, {"k": ""}, ["labels.k"]) == {"k": ""}


@pytest.mark.parametrize(
    ("rules", "paths"),
    [
        (fieldmask.CONTAINER, ["labels", "labels.a", f"labels.{GC}", "spec", "image"]),
        (fieldmask.CONTAINER, ["extensions", "extensions.x", "snapshotkey"]),
        (fieldmask.IMAGE, ["labels", "labels.k", "target", "annotations", "annotations.k"]),
        (fieldmask.CONTENT, ["labels", f"labels.{GC}"]),
        (fieldmask.SNAPSHOT, ["labels", "labels.containerd.io/snapshot.ref"]),
        (fieldmask.NAMESPACE, ["labels.a", "labels.a.b/c"]),
        (fieldmask.NAMESPACE, []),
    ],
)
def test_allowed_paths(rules: fieldmask.MaskRules, paths: list[str]) -> None:
    rules.validate(paths, "x")


@pytest.mark.parametrize(
    ("rules", "name", "path", "message"),
    [
        (fieldmask.CONTAINER, "web", "runtime", 'cannot update "runtime" field on "web"'),
        (fieldmask.CONTAINER, "web", "snapshotter", 'cannot update "snapshotter" field on "web"'),
        (fieldmask.CONTAINER, "web", "image.x", 'cannot update "image.x" field on "web"'),
        (fieldmask.IMAGE, "busybox", "name", 'cannot update "name" field on image "busybox"'),
        (fieldmask.IMAGE, "busybox", "target.digest",
         'cannot update "target.digest" field on image "busybox"'),
        (fieldmask.CONTENT, "sha256:aa", "size",
         'cannot update "size" field on content info "sha256:aa"'),
        (fieldmask.SNAPSHOT, "layer", "kind", 'cannot update "kind" field on snapshot "layer"'),
        (fieldmask.SNAPSHOT, "layer", "parent", 'cannot update "parent" field on snapshot "layer"'),
        (fieldmask.SNAPSHOT, "l", "labels.", 'cannot update "labels." field on snapshot "l"'),
        (fieldmask.NAMESPACE, "default", "labels", 'cannot update "labels" field'),
        (fieldmask.NAMESPACE, "default", "name", 'cannot update "name" field'),
        (fieldmask.SNAPSHOT, 'we"ird', 'x"y', 'cannot update "x\\"y" field on snapshot "we\\"ird"'),
    ],
)  # fmt: skip
def test_refused_paths(rules: fieldmask.MaskRules, name: str, path: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        rules.validate(["labels.ok", path], name)
    assert str(info.value) == f"{message}: invalid argument"


def test_validate_paths_directly() -> None:
    fieldmask.validate_paths(["a", "m.k"], fields={"a"}, maps={"m"}, kind="thing", name="n")
    with pytest.raises(InvalidArgument, match='cannot update "m" field on thing "n"'):
        fieldmask.validate_paths(["m"], fields={"a"}, maps={"m"}, kind="thing", name="n")
    with pytest.raises(InvalidArgument, match='cannot update "labels.k" field on "n"'):
        fieldmask.validate_paths(["labels.k"], fields=(), maps=(), name="n")
