"""Explicit sequences for every divergence the differential machines found and ctrpyd fixed.

Each call goes to both daemons through ``Pair.check`` (so ctrpyd must still answer as
containerd does) and the test also pins what containerd answered when the divergence was
found, so that a change on either side shows here first.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import any_pb2, field_mask_pb2

from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as ct
from ctrpy.api.containerd.services.content.v1 import content_pb2 as cn
from ctrpy.api.containerd.services.diff.v1 import diff_pb2 as df
from ctrpy.api.containerd.services.images.v1 import images_pb2 as im
from ctrpy.api.containerd.services.leases.v1 import leases_pb2 as ls
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2 as nsp
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as sn
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2 as tk
from ctrpy.api.containerd.types import descriptor_pb2
from tests.differential.cleanup import remove_namespace
from tests.differential.machine import MARKER, mark
from tests.differential.pair import Outcome, Pair, Split, invoke, sorted_statuses, subscribed
from tests.differential.test_tasks import NAMESPACE as TASKS_NS
from tests.differential.test_tasks import _mounts, _process
from tests.differential.test_tasks import image as image  # the fixture, for the task cases
from tests.hostile.specs import runtime_spec

SPEC = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b"{}")
RUNTIME = ct.Container.Runtime(name="io.containerd.runc.v2")


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Case:
    """A pair and fresh namespaces for one test, removed afterwards."""

    def __init__(self, pair: Pair, leased: bool = True) -> None:
        self.pair = pair
        prefix = f"k{secrets.token_hex(4)}"
        self.ns, self.other = f"{prefix}-a", f"{prefix}-b"
        self.names = [self.ns, self.other]
        # Under a lease, as the machines: a garbage collection (which either daemon may run
        # after an earlier test's deletions) must not take a snapshot or blob mid-test.
        self.lease: str | None = None
        if leased:  # (creating the lease creates the namespaces)
            for ns in self.names:
                pair.check("leases", "Create", ls.CreateRequest(id=f"{prefix}-lease"), ns)
            self.lease = f"{prefix}-lease"

    def same(self, service: str, method: str, request: Any, code: str = "OK", ns: str | None = None,
             **kwargs: Any) -> Outcome:
        """Call both daemons, compare (raises on a divergence), and check containerd's code."""
        kwargs.setdefault("lease", self.lease)
        ref, _ = self.pair.check(service, method, request, ns or self.ns, **kwargs)
        assert ref.code == code, f"containerd now answers {ref.summary()}"
        return ref


def _case(pair: Pair, leased: bool) -> Iterator[Case]:
    pair.log.clear()
    c = Case(pair, leased)
    try:
        yield c
    finally:
        for ns in c.names:
            for side in (pair.reference, pair.ctrpy):
                remove_namespace(side, ns)


@pytest.fixture
def case(pair: Pair) -> Iterator[Case]:
    """Fresh namespaces, and a lease in each that every call carries."""
    yield from _case(pair, leased=True)


@pytest.fixture
def bare(pair: Pair) -> Iterator[Case]:
    """Fresh namespaces that do not exist yet, and no lease (for the namespace cases)."""
    yield from _case(pair, leased=False)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# -- namespaces -----------------------------------------------------------------------------


def test_namespace_get_of_missing_or_invalid_name_answers_empty_labels(bare: Case) -> None:
    for name in (bare.other, "Bad Name/", ""):
        bare.same("namespaces", "Get", nsp.GetNamespaceRequest(name=name))


def test_namespace_list_ignores_its_filter(bare: Case) -> None:
    bare.same("namespaces", "Create", nsp.CreateNamespaceRequest(namespace=nsp.Namespace(name=bare.other)))
    mine = bare.pair.check("namespaces", "List", nsp.ListNamespacesRequest(filter="name==nothing"), bare.ns,
                           keep=lambda r: [n for n in r.get("namespaces", []) if n["name"] == bare.other])[0]
    assert mine.reply == [{"name": bare.other}]
    bare.same("namespaces", "List", nsp.ListNamespacesRequest(filter="labels.\"unterminated"),
              keep=lambda r: None)


def test_namespace_update_creates_only_when_it_sets_a_label_and_takes_label_paths_only(bare: Case) -> None:
    update = nsp.UpdateNamespaceRequest
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other)))
    bare.same("namespaces", "Get", nsp.GetNamespaceRequest(name=bare.other))
    bare.same("namespaces", "Delete", nsp.DeleteNamespaceRequest(name=bare.other), "NOT_FOUND")
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"k": "v"}),
                                             update_mask=mask("labels")), "INVALID_ARGUMENT")
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"k": "v", "x": "y"}),
                                             update_mask=mask("labels.k")))
    bare.same("namespaces", "Get", nsp.GetNamespaceRequest(name=bare.other))
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other), update_mask=mask("labels.k")))
    bare.same("namespaces", "Get", nsp.GetNamespaceRequest(name=bare.other))


def test_namespace_events_carry_the_callers_namespace_and_the_requested_labels(bare: Case) -> None:
    with subscribed(bare.pair, [f"namespace=={bare.ns}"]) as (ref_sub, our_sub):
        mark(bare.pair, (ref_sub, our_sub), bare.ns, "start")
        bare.same("namespaces", "Create", nsp.CreateNamespaceRequest(namespace=nsp.Namespace(name=bare.ns)))
        bare.same("namespaces", "Create", nsp.CreateNamespaceRequest(
            namespace=nsp.Namespace(name=bare.other, labels={"a": "1"})))
        bare.same("namespaces", "Update", nsp.UpdateNamespaceRequest(
            namespace=nsp.Namespace(name=bare.other, labels={"a": "", "b": "2"})))
        bare.same("namespaces", "Delete", nsp.DeleteNamespaceRequest(name=bare.ns))
        seen = []
        for sub in (ref_sub, our_sub):
            assert sub.wait_for(lambda envs: any(e["topic"] == "/namespaces/delete" for e in envs))
            seen.append([(e["namespace"], e["topic"], e["event"].get("name"), e["event"].get("labels"))
                         for e in sub.envelopes if e["topic"] != MARKER])
    assert seen[0] == seen[1], seen
    assert (bare.ns, "/namespaces/create", bare.other, {"a": "1"}) in seen[1]
    assert (bare.ns, "/namespaces/update", bare.other, {"a": "", "b": "2"}) in seen[1]


def test_namespace_with_only_a_lease_can_be_deleted(bare: Case) -> None:
    bare.same("leases", "Create", ls.CreateRequest(id="l1"))
    bare.same("namespaces", "Delete", nsp.DeleteNamespaceRequest(name=bare.ns))
    bare.same("leases", "List", ls.ListRequest())


def test_namespace_create_checks_existence_before_an_empty_label_key(bare: Case) -> None:
    create = nsp.CreateNamespaceRequest
    bare.same("namespaces", "Create", create(namespace=nsp.Namespace(name=bare.other)))
    bare.same("namespaces", "Create", create(namespace=nsp.Namespace(name=bare.other, labels={"": "v"})),
              "ALREADY_EXISTS")


# -- containers, images, leases ----------------------------------------------------------------


def test_container_lookups_of_invalid_ids_are_not_found(case: Case) -> None:
    for bad in ("-a", "a/b", "ü", "a" * 80):
        case.same("containers", "Get", ct.GetContainerRequest(id=bad), "NOT_FOUND")
        case.same("containers", "Delete", ct.DeleteContainerRequest(id=bad), "NOT_FOUND")
        case.same("containers", "Update", ct.UpdateContainerRequest(
            container=ct.Container(id=bad, runtime=RUNTIME)), "NOT_FOUND")
    case.same("containers", "Update", ct.UpdateContainerRequest(container=ct.Container(runtime=RUNTIME)),
              "INVALID_ARGUMENT")


def test_labels_with_empty_values_are_not_stored(case: Case) -> None:
    container = ct.Container(id="c1", runtime=RUNTIME, spec=SPEC, labels={"k": "", "x": "y", "": ""})
    case.same("containers", "Create", ct.CreateContainerRequest(container=container))
    case.same("containers", "Get", ct.GetContainerRequest(id="c1"))
    case.same("leases", "Create", ls.CreateRequest(id="l1", labels={"k": "", "x": "y", "big": "v" * 5000}))
    case.same("leases", "List", ls.ListRequest())


def test_existence_is_checked_before_an_empty_label_key(case: Case) -> None:
    container = ct.Container(id="c1", runtime=RUNTIME, spec=SPEC)
    case.same("containers", "Create", ct.CreateContainerRequest(container=container))
    container.labels[""] = "v"
    case.same("containers", "Create", ct.CreateContainerRequest(container=container), "ALREADY_EXISTS")
    target = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.manifest.v1+json",
                                       digest=digest(b"x"), size=1)
    case.same("images", "Create", im.CreateImageRequest(image=im.Image(name="img", target=target)))
    case.same("images", "Create", im.CreateImageRequest(image=im.Image(name="img", target=target,
                                                                       labels={"": "v"})), "ALREADY_EXISTS")
    case.same("leases", "Create", ls.CreateRequest(id="l1"))
    case.same("leases", "Create", ls.CreateRequest(id="l1", labels={"": "v"}), "ALREADY_EXISTS")


def test_image_target_digest_is_validated_and_update_needs_a_name(case: Case) -> None:
    target = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.manifest.v1+json",
                                       digest="sha256:zz", size=1)
    case.same("images", "Create", im.CreateImageRequest(image=im.Image(name="img", target=target)),
              "INVALID_ARGUMENT")
    case.same("images", "Update", im.UpdateImageRequest(image=im.Image(target=target)), "INVALID_ARGUMENT")


def test_lease_lookups_and_resource_checks_in_containerds_order(case: Case) -> None:
    case.same("leases", "Delete", ls.DeleteRequest(id=""), "NOT_FOUND")
    resource = ls.Resource(id="", type="bogus")
    case.same("leases", "AddResource", ls.AddResourceRequest(id="nope", resource=resource), "NOT_FOUND")
    case.same("leases", "Create", ls.CreateRequest(id="l1"))
    case.same("leases", "AddResource", ls.AddResourceRequest(id="l1", resource=resource), "UNIMPLEMENTED")
    case.same("leases", "DeleteResource", ls.DeleteResourceRequest(
        id="l1", resource=ls.Resource(id="", type="content")), "INVALID_ARGUMENT")


# -- content ------------------------------------------------------------------------------------


def test_content_write_replies_reads_and_update_order(case: Case) -> None:
    w = cn.WriteContentRequest
    data = b"hello"
    writes = [w(action=cn.WRITE, ref="r1", total=5, expected=digest(data), data=data[:2]),
              w(action=cn.STAT, ref="r1")]
    case.same("content", "Write", writes, keep=lambda replies: replies[: len(writes)])
    case.same("content", "Write", [w(action=cn.COMMIT, ref="r1", offset=2, data=data[2:], total=5,
                                     expected=digest(data))], keep=lambda replies: replies[:1])
    case.same("content", "Read", cn.ReadContentRequest(digest=digest(data), offset=3))
    case.same("content", "Update", cn.UpdateRequest(info=cn.Info(digest=digest(b"other")),
                                                    update_mask=mask("bogus")), "NOT_FOUND")


def test_an_ingest_creates_its_namespace(bare: Case) -> None:
    bare.same("content", "Write", [cn.WriteContentRequest(action=cn.WRITE, ref="r2", data=b"x")],
              ns=bare.other, keep=lambda replies: replies[:1])
    bare.same("namespaces", "Create", nsp.CreateNamespaceRequest(namespace=nsp.Namespace(name=bare.other)),
              "ALREADY_EXISTS")


def test_deleting_a_namespace_forgets_its_ingests_but_a_write_resumes_one(bare: Case) -> None:
    w = cn.WriteContentRequest
    first = bare.same("content", "Write", [w(action=cn.WRITE, ref="r1", data=b"abc", total=6)],
                      keep=lambda replies: replies[:1])
    bare.same("content", "Write", [w(action=cn.WRITE, ref="r0", data=b"xy", total=6)], keep=lambda replies: replies[:1])
    bare.same("content", "ListStatuses", cn.ListStatusesRequest(), keep=sorted_statuses, ignore=["expected"])
    bare.same("namespaces", "Delete", nsp.DeleteNamespaceRequest(name=bare.ns))
    listed = bare.same("content", "ListStatuses", cn.ListStatusesRequest())
    assert listed.reply == {}
    bare.same("content", "Status", cn.StatusRequest(ref="r1"), "NOT_FOUND")
    bare.same("content", "Abort", cn.AbortRequest(ref="r1"), "NOT_FOUND")
    # The data stayed: a write with the ref (in the namespace, created again) resumes it.
    resumed = bare.same("content", "Write", [w(action=cn.STAT, ref="r1", total=6)], keep=lambda replies: replies[:1])
    assert resumed.reply[0]["offset"] == 3 and resumed.reply[0]["digest"] == first.reply[0]["digest"]
    bare.same("content", "ListStatuses", cn.ListStatusesRequest(), ignore=["expected"])
    bare.same("content", "Abort", cn.AbortRequest(ref="r1"))
    bare.same("content", "Write", [w(action=cn.WRITE, ref="r0", offset=2, data=b"z", total=6)],
              keep=lambda replies: replies[:1])
    bare.same("content", "Abort", cn.AbortRequest(ref="r0"))
    bare.same("content", "ListStatuses", cn.ListStatusesRequest())


def test_commit_refused_for_its_labels_keeps_the_data_in_the_ingest(case: Case) -> None:
    w = cn.WriteContentRequest
    data = b"other"
    case.same("content", "Write", [w(action=cn.COMMIT, ref="r1", total=5, expected=digest(data), data=data,
                                     labels={"k": "v" * 5000})], "INVALID_ARGUMENT")
    case.same("content", "Status", cn.StatusRequest(ref="r1"), ignore=["expected"])


def test_an_expected_digest_already_stored_mid_stream(case: Case) -> None:
    w = cn.WriteContentRequest
    data = b"hello"
    case.same("content", "Write", [w(action=cn.COMMIT, ref="r1", total=5, expected=digest(data), data=data)],
              keep=lambda replies: replies[:1])
    case.same("content", "Write", [w(action=cn.STAT, ref="r2"), w(action=cn.WRITE, ref="r2",
                                                                   expected=digest(data))],
              "ALREADY_EXISTS", keep=lambda replies: replies[:1])


def test_a_blob_another_namespace_stored_is_linked_without_its_bytes(case: Case) -> None:
    # containerd's default content_sharing_policy "shared": a STAT naming the digest answers the
    # blob's size as the offset, and a COMMIT there, without data, links the blob.
    w = cn.WriteContentRequest
    data = b"shared blob"
    d, size = digest(data), len(data)
    case.same("content", "Write", [w(action=cn.COMMIT, ref="r1", total=size, expected=d, data=data)],
              keep=lambda replies: replies[:1])
    stat = case.same("content", "Write", [w(action=cn.STAT, ref="r1", total=size, expected=d)], ns=case.other,
                     keep=lambda replies: replies[:1])
    assert stat.reply[0]["offset"] == size and stat.reply[0]["digest"] == d
    case.same("content", "Info", cn.InfoRequest(digest=d), "NOT_FOUND", ns=case.other)
    case.same("content", "Status", cn.StatusRequest(ref="r1"), "NOT_FOUND", ns=case.other)  # (allowed wording)
    case.same("content", "ListStatuses", cn.ListStatusesRequest(), ns=case.other)
    reqs = [w(action=cn.STAT, ref="r1", expected=d),
            w(action=cn.COMMIT, ref="r1", offset=size, total=size, expected=d, labels={"k": "v"})]
    case.same("content", "Write", reqs, ns=case.other, keep=lambda replies: replies[: len(reqs)])
    case.same("content", "Info", cn.InfoRequest(digest=d), ns=case.other)
    case.same("leases", "ListResources", ls.ListResourcesRequest(id=case.lease), ns=case.other)
    case.same("content", "Write", [w(action=cn.STAT, ref="r2", expected=d)], "ALREADY_EXISTS", ns=case.other)


def test_a_shared_write_checks_what_its_commit_names_and_copies_before_new_data(case: Case) -> None:
    w = cn.WriteContentRequest
    data = b"shared blob 2"
    d, size = digest(data), len(data)
    case.same("content", "Write", [w(action=cn.COMMIT, ref="r1", total=size, expected=d, data=data)],
              keep=lambda replies: replies[:1])
    stat = w(action=cn.STAT, ref="r1", expected=d)
    for commit in (w(action=cn.COMMIT, ref="r1", offset=size, total=size + 1),
                   w(action=cn.COMMIT, ref="r1", offset=size, expected=digest(b"other")),
                   w(action=cn.COMMIT, ref="r1", total=size + 1),
                   w(action=cn.WRITE, ref="r1", offset=size + 1, data=b"x")):
        case.same("content", "Write", [stat, commit], ns=case.other,
                  code="OUT_OF_RANGE" if commit.action == cn.WRITE else "FAILED_PRECONDITION",
                  keep=lambda replies: replies[:1])
    case.same("content", "Info", cn.InfoRequest(digest=d), "NOT_FOUND", ns=case.other)
    # Data at the blob's offset: the blob is copied into a real ingest first.
    reqs = [stat, w(action=cn.WRITE, ref="r1", offset=size, data=b"+")]
    case.same("content", "Write", reqs, ns=case.other, keep=lambda replies: replies[: len(reqs)])
    case.same("content", "Status", cn.StatusRequest(ref="r1"), ns=case.other, ignore=["expected"])
    case.same("content", "Abort", cn.AbortRequest(ref="r1"), ns=case.other)
    # A shared STAT of a size that is not the blob's opens a real, empty ingest.
    case.same("content", "Write", [w(action=cn.STAT, ref="r4", expected=d, total=size + 1)], ns=case.other,
              keep=lambda replies: replies[:1])
    case.same("content", "Abort", cn.AbortRequest(ref="r4"), ns=case.other)


def test_a_resumed_ingest_keeps_no_total_or_digest_from_an_earlier_stream(case: Case) -> None:
    # containerd's service knows only what the stream announces: the STAT of a resumed ingest
    # reports no total, and its COMMIT checks neither the old total nor the old digest.
    w = cn.WriteContentRequest
    case.same("content", "Write", [w(action=cn.WRITE, ref="t1", total=6, expected=digest(b"abcdef"), data=b"abc")],
              keep=lambda replies: replies[:1])
    case.same("content", "Status", cn.StatusRequest(ref="t1"), ignore=["expected"])
    case.same("content", "Write", [w(action=cn.STAT, ref="t1")], keep=lambda replies: replies[:1])
    case.same("content", "Write", [w(action=cn.WRITE, ref="t1", offset=3, data=b"d"), w(action=cn.STAT, ref="t1")],
              keep=lambda replies: replies[:2])
    case.same("content", "Write", [w(action=cn.COMMIT, ref="t1", offset=4, data=b"XYZ")],
              keep=lambda replies: replies[:1])
    case.same("content", "Info", cn.InfoRequest(digest=digest(b"abcdXYZ")))
    # Within one stream the announced total is checked, and later replies repeat the total of
    # the last STAT reply (containerd reuses one reply message).
    reqs = [w(action=cn.STAT, ref="t2", total=5), w(action=cn.WRITE, ref="t2", data=b"hell"),
            w(action=cn.COMMIT, ref="t2", offset=4, data=b"o")]
    case.same("content", "Write", reqs, keep=lambda replies: replies[: len(reqs)])
    case.same("content", "Write", [w(action=cn.WRITE, ref="t3", total=5, data=b"hel"), w(action=cn.STAT, ref="t3"),
                                   w(action=cn.COMMIT, ref="t3", offset=3, data=b"l")],
              "FAILED_PRECONDITION", keep=lambda replies: replies[:2])


# -- snapshots ------------------------------------------------------------------------------------


def test_snapshot_checks_in_containerds_order_and_words(case: Case) -> None:
    def prep(key: str, parent: str = "", **labels: str) -> sn.PrepareSnapshotRequest:
        return sn.PrepareSnapshotRequest(snapshotter="overlayfs", key=key, parent=parent, labels=labels)

    case.same("snapshots", "Prepare", prep("k1"))
    case.same("snapshots", "Prepare", prep("k1", parent="missing"), "ALREADY_EXISTS")
    case.same("snapshots", "Prepare", prep("k2", parent="missing"), "NOT_FOUND")
    case.same("snapshots", "Prepare", prep("k2", big="v" * 5000), "INVALID_ARGUMENT")
    case.same("snapshots", "Prepare", prep("k3", k="", x="y"))
    case.same("snapshots", "Stat", sn.StatSnapshotRequest(snapshotter="overlayfs", key="nope"), "NOT_FOUND")
    case.same("snapshots", "Remove", sn.RemoveSnapshotRequest(snapshotter="overlayfs", key=""), "NOT_FOUND")
    case.same("snapshots", "Update", sn.UpdateSnapshotRequest(snapshotter="overlayfs", info=sn.Info()),
              "INVALID_ARGUMENT")
    case.same("snapshots", "Update", sn.UpdateSnapshotRequest(
        snapshotter="overlayfs", info=sn.Info(name="nope"), update_mask=mask("bogus")), "NOT_FOUND")
    case.same("snapshots", "Commit", sn.CommitSnapshotRequest(snapshotter="overlayfs", name="k1", key="nope"),
              "ALREADY_EXISTS")
    case.same("snapshots", "Commit", sn.CommitSnapshotRequest(snapshotter="overlayfs", name="k1", key="k3",
                                                              labels={"big": "v" * 5000}), "INVALID_ARGUMENT")
    case.same("snapshots", "Mounts", sn.MountsRequest(snapshotter="overlayfs", key="k3"))
    case.same("snapshots", "Prepare", prep("k4"), "NOT_FOUND", lease="no-such-lease")


def test_an_empty_diff_apply_is_refused(case: Case) -> None:
    """containerd 1.6 exits on this request (kept divergence): it goes to ctrpyd only."""
    outcome = invoke(case.pair.ctrpy, "diff", "Apply", df.ApplyRequest(), case.ns)
    assert outcome.code == "INVALID_ARGUMENT", outcome


# -- tasks ----------------------------------------------------------------------------------
# In the namespace the tasks machine imported busybox into (the ``image`` fixture); each test
# removes its own tasks, containers and snapshots.


class Tasks:
    """Containers on busybox in the task namespace, and the calls both daemons get."""

    def __init__(self, pair: Pair, parent: str) -> None:
        self.pair, self.parent = pair, parent
        self.prefix = f"k{secrets.token_hex(3)}"
        self.made: list[str] = []
        self.lease = f"{self.prefix}-lease"
        pair.check("leases", "Create", ls.CreateRequest(id=self.lease), TASKS_NS)

    def same(self, method: str, request: Any, code: str = "OK", *, exact: bool = True,
             **kwargs: Any) -> Outcome:
        """A task call on both daemons; with ``exact``, a NotFound message must be containerd's
        word for word (the comparator only wants one to contain the other)."""
        ref, _ = self.pair.check("tasks", method, request, TASKS_NS, self.lease, **kwargs)
        assert ref.code == code, f"containerd now answers {ref.summary()}"
        assert self.pair.raw is not None
        raw_ref, raw_ours = self.pair.raw
        if exact and code == "NOT_FOUND":
            assert raw_ours.message == raw_ref.message, (method, raw_ref.message, raw_ours.message)
        return ref

    def container(self, name: str) -> str:
        cid = f"{self.prefix}-{name}"
        self.pair.check("snapshots", "Prepare", sn.PrepareSnapshotRequest(
            snapshotter="overlayfs", key=cid, parent=self.parent), TASKS_NS, self.lease)
        self.made.append(cid)

        def create(side: str) -> ct.CreateContainerRequest:
            spec = runtime_spec(["sleep", "1000"], f"/ctrpydiff-{side}-{cid}")
            return ct.CreateContainerRequest(container=ct.Container(
                id=cid, runtime=RUNTIME, snapshotter="overlayfs", snapshot_key=cid,
                spec=any_pb2.Any(type_url=SPEC.type_url, value=json.dumps(spec).encode())))

        self.pair.check("containers", "Create", Split(create("ref"), create("py")), TASKS_NS, self.lease,
                        ignore=("spec",))
        return cid

    def task(self, name: str) -> str:
        """A container with a created (not started) task."""
        cid = self.container(name)
        mounts = []
        for side in (self.pair.reference, self.pair.ctrpy):
            reply = invoke(side, "snapshots", "Mounts", sn.MountsRequest(snapshotter="overlayfs", key=cid),
                           TASKS_NS)
            mounts.append(_mounts(reply.reply))
        self.same("Create", Split(tk.CreateTaskRequest(container_id=cid, rootfs=mounts[0]),
                                  tk.CreateTaskRequest(container_id=cid, rootfs=mounts[1])))
        return cid

    def cleanup(self) -> None:
        for side in (self.pair.reference, self.pair.ctrpy):
            for cid in self.made:
                for service, method, request in (
                        ("tasks", "Kill", tk.KillRequest(container_id=cid, signal=9, all=True)),
                        ("tasks", "Wait", tk.WaitRequest(container_id=cid)),
                        ("tasks", "Delete", tk.DeleteTaskRequest(container_id=cid)),
                        ("containers", "Delete", ct.DeleteContainerRequest(id=cid)),
                        ("snapshots", "Remove", sn.RemoveSnapshotRequest(snapshotter="overlayfs", key=cid))):
                    invoke(side, service, method, request, TASKS_NS, timeout=20)
            invoke(side, "leases", "Delete", ls.DeleteRequest(id=self.lease), TASKS_NS)


@pytest.fixture
def tasks(pair: Pair, image: str) -> Iterator[Tasks]:
    pair.log.clear()
    t = Tasks(pair, image)
    try:
        yield t
    finally:
        t.cleanup()


GO_ZERO_TIME = -62135596800


def _zero_exited_at(t: Tasks) -> None:
    """Both daemons' last answer is a process whose exited_at is Go's zero time."""
    assert t.pair.raw is not None
    for raw in t.pair.raw:
        process = raw.reply.get("process") or raw.reply["tasks"][0]
        assert "container_id" not in process
        assert process["exited_at"] == ("<time>", GO_ZERO_TIME, 0)


def test_task_get_and_list_leave_container_id_empty_and_always_set_exited_at(tasks: Tasks) -> None:
    cid = tasks.task("a")
    listing = tk.ListTasksRequest(filter=f"id=={cid}")
    for request in (tk.GetRequest(container_id=cid), listing):  # created
        tasks.same("Get" if isinstance(request, tk.GetRequest) else "List", request)
        _zero_exited_at(tasks)
    tasks.same("Start", tk.StartRequest(container_id=cid))
    tasks.same("Get", tk.GetRequest(container_id=cid))  # running
    _zero_exited_at(tasks)
    tasks.same("List", listing)
    _zero_exited_at(tasks)
    tasks.same("Exec", tk.ExecProcessRequest(container_id=cid, exec_id="e1", spec=_process(["sleep", "1000"])))
    tasks.same("Get", tk.GetRequest(container_id=cid, exec_id="e1"))
    _zero_exited_at(tasks)
    tasks.same("Kill", tk.KillRequest(container_id=cid, signal=9))
    tasks.same("Wait", tk.WaitRequest(container_id=cid), timeout=30)
    tasks.same("Get", tk.GetRequest(container_id=cid))  # stopped: the real exit time
    tasks.same("List", listing)
    assert tasks.pair.raw is not None
    for raw in tasks.pair.raw:
        assert raw.reply["tasks"][0]["exited_at"][1] > 0 and "container_id" not in raw.reply["tasks"][0]


def test_kill_all_of_an_exited_task_succeeds(tasks: Tasks) -> None:
    cid = tasks.task("a")
    tasks.same("Start", tk.StartRequest(container_id=cid))
    tasks.same("Exec", tk.ExecProcessRequest(container_id=cid, exec_id="e1", spec=_process(["sleep", "1000"])))
    tasks.same("Start", tk.StartRequest(container_id=cid, exec_id="e1"))
    tasks.same("Kill", tk.KillRequest(container_id=cid, exec_id="e1", signal=9))
    tasks.same("Wait", tk.WaitRequest(container_id=cid, exec_id="e1"), timeout=30)
    # An exited exec stays finished, with or without all.
    tasks.same("Kill", tk.KillRequest(container_id=cid, exec_id="e1", signal=0, all=True), "NOT_FOUND")
    tasks.same("Kill", tk.KillRequest(container_id=cid, signal=9))
    tasks.same("Wait", tk.WaitRequest(container_id=cid), timeout=30)
    tasks.same("Kill", tk.KillRequest(container_id=cid, signal=0, all=True))
    tasks.same("Kill", tk.KillRequest(container_id=cid, signal=9, all=True))
    tasks.same("Kill", tk.KillRequest(container_id=cid, signal=0), "NOT_FOUND")
    tasks.same("Delete", tk.DeleteTaskRequest(container_id=cid))


def test_resize_of_a_task_without_a_terminal_is_a_no_op(tasks: Tasks) -> None:
    cid = tasks.task("r")
    tasks.same("ResizePty", tk.ResizePtyRequest(container_id=cid, width=80, height=24))
    tasks.same("Start", tk.StartRequest(container_id=cid))
    tasks.same("ResizePty", tk.ResizePtyRequest(container_id=cid, width=100, height=30))
    tasks.same("Kill", tk.KillRequest(container_id=cid, signal=9))
    tasks.same("Wait", tk.WaitRequest(container_id=cid), timeout=30)
    tasks.same("Delete", tk.DeleteTaskRequest(container_id=cid))


def _lookups(cid: str) -> list[tuple[str, Any]]:
    """Every task call that names a container, with what else it needs to get that far."""
    resources = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
                            value=b"{}")
    return [
        ("Get", tk.GetRequest(container_id=cid)),
        ("Get", tk.GetRequest(container_id=cid, exec_id="e9")),
        ("Start", tk.StartRequest(container_id=cid)),
        ("Delete", tk.DeleteTaskRequest(container_id=cid)),
        ("DeleteProcess", tk.DeleteProcessRequest(container_id=cid, exec_id="e9")),
        ("Kill", tk.KillRequest(container_id=cid, signal=0)),
        ("Exec", tk.ExecProcessRequest(container_id=cid, exec_id="e2", spec=_process(["true"]))),
        ("Exec", tk.ExecProcessRequest(container_id=cid, exec_id="bad/id", spec=_process(["true"]))),
        ("Wait", tk.WaitRequest(container_id=cid)),
        ("ListPids", tk.ListPidsRequest(container_id=cid)),
        ("Pause", tk.PauseTaskRequest(container_id=cid)),
        ("Resume", tk.ResumeTaskRequest(container_id=cid)),
        ("CloseIO", tk.CloseIORequest(container_id=cid, stdin=True)),
        ("ResizePty", tk.ResizePtyRequest(container_id=cid, width=1, height=1)),
        ("Update", tk.UpdateTaskRequest(container_id=cid, resources=resources)),
        ("Update", tk.UpdateTaskRequest(container_id=cid)),
        ("Checkpoint", tk.CheckpointTaskRequest(container_id=cid)),
    ]


def test_task_calls_name_a_missing_container_apart_from_a_missing_task(tasks: Tasks) -> None:
    missing = f"{tasks.prefix}-missing"
    for method, request in _lookups(missing):
        ref = tasks.same(method, request, "NOT_FOUND")
        assert ref.message == f'container "{missing}" in namespace "{TASKS_NS}": not found'
    idle = tasks.container("idle")
    for method, request in _lookups(idle):
        ref = tasks.same(method, request, "NOT_FOUND")
        assert ref.message == f"task {idle} not found"
    # Exec: an empty exec id is refused before anything is looked up.
    tasks.same("Exec", tk.ExecProcessRequest(container_id=missing, spec=_process(["true"])), "INVALID_ARGUMENT")


def test_task_calls_naming_a_missing_exec(tasks: Tasks) -> None:
    cid = tasks.task("a")
    tasks.same("Start", tk.StartRequest(container_id=cid))
    for method, request in [
            ("Get", tk.GetRequest(container_id=cid, exec_id="e9")),
            ("Start", tk.StartRequest(container_id=cid, exec_id="e9")),
            ("Kill", tk.KillRequest(container_id=cid, exec_id="e9", signal=0)),
            ("Kill", tk.KillRequest(container_id=cid, exec_id="e9", signal=0, all=True)),
            ("Wait", tk.WaitRequest(container_id=cid, exec_id="e9")),
            ("DeleteProcess", tk.DeleteProcessRequest(container_id=cid, exec_id="e9")),
            ("CloseIO", tk.CloseIORequest(container_id=cid, exec_id="e9", stdin=True)),
            ("ResizePty", tk.ResizePtyRequest(container_id=cid, exec_id="e9", width=1, height=1))]:
        ref = tasks.same(method, request, "NOT_FOUND")
        assert ref.message == "process does not exist e9: not found"
    # An exec id that is no identifier, on a task that exists: InvalidArgument from both.
    tasks.same("Exec", tk.ExecProcessRequest(container_id=cid, exec_id="bad/id", spec=_process(["true"])),
               "INVALID_ARGUMENT")
