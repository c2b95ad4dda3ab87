"""Differential state machine over snapshots (overlayfs) and diff (Apply/Diff), with the
events a subscriber sees for them.

Mounts hold paths of each daemon: they are compared with the paths replaced (see
``Normaliser.mount``), and a Diff call is given each daemon's own mounts (``Split``).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from ctrpy.api.containerd.services.content.v1 import content_pb2 as cn
from ctrpy.api.containerd.services.diff.v1 import diff_pb2 as df
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as sn
from ctrpy.api.containerd.types import descriptor_pb2, mount_pb2
from tests.differential.machine import DiffMachine, labels, mask, masks
from tests.differential.pair import Outcome, Pair, Split

SNAPSHOTTER = "overlayfs"
KEYS = ["k1", "k2", "k3", "", "a/b", "x" * 300]
NAMES = ["c1", "c2", "k1", ""]
SNAPSHOT_FILTERS = [
    "", "kind==active", "kind==committed", "kind==view", "name==k1", "name~=^k", "parent==c1",
    "parent", "labels.k", "labels.k==v", "kind!=active", "kind==active,labels.k", "name==",
    "bogus==1", "kind~=[",
]
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def _layer(files: dict[str, bytes]) -> bytes:
    """A small uncompressed layer, the same bytes on every run (fixed times and owners)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


LAYERS = {
    "one": _layer({"hello.txt": b"hello\n"}),
    "two": _layer({"other.txt": b"other\n"}),
    "notatar": b"this is not a tar archive, at all" * 20,
}


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _mounts(outcome: Outcome) -> list[mount_pb2.Mount]:
    reply = outcome.reply or {}
    return [mount_pb2.Mount(type=m.get("type", ""), source=m.get("source", ""),
                            options=m.get("options", [])) for m in reply.get("mounts", [])]


class StorageMachine(DiffMachine):
    def __init__(self) -> None:
        super().__init__()
        # Each daemon's mounts of the snapshots this example prepared or viewed, by key.
        self.mounts: dict[str, tuple[list[mount_pb2.Mount], list[mount_pb2.Mount]]] = {}

    @initialize()
    def store_layers(self) -> None:
        w = cn.WriteContentRequest
        for data in LAYERS.values():
            self.call("content", "Write", [w(action=cn.COMMIT, ref=f"layer-{digest(data)[7:19]}",
                                             total=len(data), expected=digest(data), data=data)],
                      keep=lambda replies: replies[:1])

    def sn(self, **fields: Any) -> dict[str, Any]:
        return {"snapshotter": SNAPSHOTTER, **fields}

    def _remember(self, key: str) -> None:
        assert self.pair.raw is not None
        ref, ours = self.pair.raw
        if ref.code == "OK" and ours.code == "OK":
            self.mounts[key] = (_mounts(ref), _mounts(ours))

    # -- snapshots --------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), parent=st.sampled_from(["", *NAMES, "k1", "missing"]),
          labels=labels, ns=st.integers(0, 1), view=st.booleans())
    def prepare(self, key: str, parent: str, labels: dict[str, str], ns: int, view: bool) -> None:
        if view:
            self.call("snapshots", "View", sn.ViewSnapshotRequest(**self.sn(key=key, parent=parent, labels=labels)),
                      self.ns(ns))
        else:
            self.call("snapshots", "Prepare",
                      sn.PrepareSnapshotRequest(**self.sn(key=key, parent=parent, labels=labels)), self.ns(ns))
        if ns == 0:
            self._remember(key)

    @rule(key=st.sampled_from(KEYS), ns=st.integers(0, 1))
    def mounts_of(self, key: str, ns: int) -> None:
        self.call("snapshots", "Mounts", sn.MountsRequest(**self.sn(key=key)), self.ns(ns))

    @rule(name=st.sampled_from(NAMES), key=st.sampled_from(KEYS), labels=labels, ns=st.integers(0, 1))
    def commit(self, name: str, key: str, labels: dict[str, str], ns: int) -> None:
        self.call("snapshots", "Commit", sn.CommitSnapshotRequest(**self.sn(name=name, key=key, labels=labels)),
                  self.ns(ns))

    @rule(key=st.sampled_from(KEYS + NAMES), ns=st.integers(0, 1))
    def remove(self, key: str, ns: int) -> None:
        ref, _ = self.call("snapshots", "Remove", sn.RemoveSnapshotRequest(**self.sn(key=key)), self.ns(ns))
        if ref.code == "OK":
            self.deleted.add(key)
            if ns == 0:
                self.mounts.pop(key, None)

    @rule(key=st.sampled_from(KEYS + NAMES), ns=st.integers(0, 1))
    def stat(self, key: str, ns: int) -> None:
        self.call("snapshots", "Stat", sn.StatSnapshotRequest(**self.sn(key=key)), self.ns(ns))

    @rule(key=st.sampled_from(KEYS + NAMES), labels=labels, paths=masks, ns=st.integers(0, 1))
    def update(self, key: str, labels: dict[str, str], paths: list[str] | None, ns: int) -> None:
        info = sn.Info(name=key, labels=labels, parent="c1", kind=sn.COMMITTED)
        self.call("snapshots", "Update", sn.UpdateSnapshotRequest(**self.sn(info=info), update_mask=mask(paths)),
                  self.ns(ns))

    @rule(flt=st.lists(st.sampled_from(SNAPSHOT_FILTERS), max_size=2), ns=st.integers(0, 1))
    def list_snapshots(self, flt: list[str], ns: int) -> None:
        self.call("snapshots", "List", sn.ListSnapshotsRequest(**self.sn(filters=flt)), self.ns(ns),
                  keep=_flat_infos)

    @rule(key=st.sampled_from(KEYS + NAMES), ns=st.integers(0, 1))
    def usage(self, key: str, ns: int) -> None:
        self.call("snapshots", "Usage", sn.UsageRequest(**self.sn(key=key)), self.ns(ns))

    @rule(snapshotter=st.sampled_from(["nope", "", "../x"]))
    def unknown_snapshotter(self, snapshotter: str) -> None:
        self.call("snapshots", "Stat", sn.StatSnapshotRequest(snapshotter=snapshotter, key="k1"))

    # -- diff -------------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS[:3]), layer=st.sampled_from(sorted(LAYERS)),
          media=st.sampled_from([TAR, TAR_GZIP, "application/octet-stream"]),
          size=st.sampled_from([None, 1, -1]))
    def apply(self, key: str, layer: str, media: str, size: int | None) -> None:
        if key not in self.mounts:
            return
        data = LAYERS[layer]
        desc = descriptor_pb2.Descriptor(media_type=media, digest=digest(data),
                                         size=len(data) if size is None else size)
        ref_mounts, our_mounts = self.mounts[key]
        self.call("diff", "Apply", Split(df.ApplyRequest(diff=desc, mounts=ref_mounts),
                                         df.ApplyRequest(diff=desc, mounts=our_mounts)))

    @rule(missing=st.booleans())
    def apply_missing_content(self, missing: bool) -> None:
        if not self.mounts:
            return
        ref_mounts, our_mounts = next(iter(self.mounts.values()))
        desc = descriptor_pb2.Descriptor(media_type=TAR, digest="sha256:" + "1" * 64 if missing else "md5:x",
                                         size=10)
        self.call("diff", "Apply", Split(df.ApplyRequest(diff=desc, mounts=ref_mounts),
                                         df.ApplyRequest(diff=desc, mounts=our_mounts)))

    @rule(left=st.sampled_from(KEYS[:3]), right=st.sampled_from(KEYS[:3]),
          media=st.sampled_from(["", TAR, TAR_GZIP, "bogus/type"]), ref=st.sampled_from(["", "d1"]))
    def diff(self, left: str, right: str, media: str, ref: str) -> None:
        if left not in self.mounts or right not in self.mounts:
            return
        (ref_left, our_left), (ref_right, our_right) = self.mounts[left], self.mounts[right]
        # The archives the two daemons write differ in their bytes (tar headers), so the
        # digest and size of the result are not compared; its media type and the outcome are.
        self.call("diff", "Diff", Split(df.DiffRequest(left=ref_left, right=ref_right, media_type=media, ref=ref),
                                        df.DiffRequest(left=our_left, right=our_right, media_type=media, ref=ref)),
                  ignore=["digest", "size", "annotations"])


def _flat_infos(reply: Any) -> Any:
    return sorted((info for batch in reply for info in batch.get("info", [])), key=repr)


def test_snapshots_and_diff(pair: Pair) -> None:
    class Machine(StorageMachine):
        pass

    Machine.pair = pair
    run_state_machine_as_test(Machine, settings=settings.get_profile("differential"))
