"""Explicit sequences for divergences fixed after the machines found them: namespace labels
with empty values, and lookups and deletions with an empty id in every service.

Like :mod:`tests.differential.test_known_cases`, each call goes to both daemons and the test
pins what containerd answers, so that a change on either side shows here first.
"""

from __future__ import annotations

from google.protobuf import any_pb2

from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as ct
from ctrpy.api.containerd.services.content.v1 import content_pb2 as cn
from ctrpy.api.containerd.services.images.v1 import images_pb2 as im
from ctrpy.api.containerd.services.leases.v1 import leases_pb2 as ls
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2 as nsp
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as sn
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2 as tk
from ctrpy.api.containerd.types import descriptor_pb2
from tests.differential.pair import invoke
from tests.differential.test_known_cases import Case, mask
from tests.differential.test_known_cases import bare as bare  # the fixtures
from tests.differential.test_known_cases import case as case

SPEC = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec", value=b"{}")
RUNTIME = ct.Container.Runtime(name="io.containerd.runc.v2")
TARGET = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.manifest.v1+json",
                                   digest="sha256:" + "0" * 64, size=1)


def test_namespace_labels_with_empty_values_are_dropped_on_create_and_update(bare: Case) -> None:
    create, update, get = nsp.CreateNamespaceRequest, nsp.UpdateNamespaceRequest, nsp.GetNamespaceRequest
    created = bare.same("namespaces", "Create", create(namespace=nsp.Namespace(
        name=bare.other, labels={"k": "", "x": "y"})))
    # The reply carries the request's labels; what is stored has only those with a value.
    assert created.reply == {"namespace": {"name": bare.other, "labels": {"k": "", "x": "y"}}}
    assert bare.same("namespaces", "Get", get(name=bare.other)).reply == {
        "namespace": {"name": bare.other, "labels": {"x": "y"}}}
    bare.same("namespaces", "List", nsp.ListNamespacesRequest(),
              keep=lambda r: [n for n in r.get("namespaces", []) if n["name"] == bare.other])
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"x": "", "z": "w"})))
    assert bare.same("namespaces", "Get", get(name=bare.other)).reply == {
        "namespace": {"name": bare.other, "labels": {"z": "w"}}}
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"z": "", "q": ""}),
                                             update_mask=mask("labels.z", "labels.q")))
    bare.same("namespaces", "Get", get(name=bare.other))
    # Only empty values: nothing stored at all (a namespace without labels).
    bare.same("namespaces", "Create", create(namespace=nsp.Namespace(name=bare.ns, labels={"e": ""})))
    assert bare.same("namespaces", "Get", get(name=bare.ns)).reply == {"namespace": {"name": bare.ns}}


def test_namespace_delete_of_an_empty_or_invalid_name_is_not_found(bare: Case) -> None:
    for name in ("", "Bad Name/", "a" * 80):
        bare.same("namespaces", "Delete", nsp.DeleteNamespaceRequest(name=name), "NOT_FOUND")


def _empty_id_lookups(c: Case) -> None:
    """Every Get and Delete with an empty id, in the case's namespace as it is now."""
    c.same("containers", "Get", ct.GetContainerRequest(id=""), "NOT_FOUND")
    c.same("images", "Get", im.GetImageRequest(name=""), "NOT_FOUND")
    c.same("leases", "ListResources", ls.ListResourcesRequest(id=""), "NOT_FOUND")
    for method, snapshot in (("Stat", sn.StatSnapshotRequest), ("Mounts", sn.MountsRequest),
                             ("Usage", sn.UsageRequest), ("Remove", sn.RemoveSnapshotRequest)):
        c.same("snapshots", method, snapshot(snapshotter="overlayfs", key=""), "NOT_FOUND")
    c.same("content", "Status", cn.StatusRequest(ref=""), "NOT_FOUND")
    c.same("content", "Abort", cn.AbortRequest(ref=""), "NOT_FOUND")
    c.same("content", "Info", cn.InfoRequest(digest=""), "INVALID_ARGUMENT")
    c.same("content", "Delete", cn.DeleteContentRequest(digest=""), "INVALID_ARGUMENT")
    for method, request in (("Get", tk.GetRequest(container_id="")),
                            ("Delete", tk.DeleteTaskRequest(container_id="")),
                            ("Kill", tk.KillRequest(container_id="", signal=9)),
                            ("DeleteProcess", tk.DeleteProcessRequest(container_id="", exec_id="e")),
                            ("Wait", tk.WaitRequest(container_id=""))):
        c.same("tasks", method, request, "NOT_FOUND")


def test_get_and_delete_with_an_empty_id_in_every_service(case: Case) -> None:
    _empty_id_lookups(case)
    # With one of each in the namespace: containerd's store seeks past the empty key.
    case.same("containers", "Create", ct.CreateContainerRequest(container=ct.Container(
        id="c1", runtime=RUNTIME, spec=SPEC)))
    case.same("images", "Create", im.CreateImageRequest(image=im.Image(name="img", target=TARGET)))
    case.same("leases", "Create", ls.CreateRequest(id="l1"))
    case.same("snapshots", "Prepare", sn.PrepareSnapshotRequest(snapshotter="overlayfs", key="s1"),
              keep=lambda r: None)
    _empty_id_lookups(case)
    case.same("containers", "Delete", ct.DeleteContainerRequest(id=""), "NOT_FOUND")
    case.same("images", "Delete", im.DeleteImageRequest(name=""), "NOT_FOUND")
    case.same("leases", "Delete", ls.DeleteRequest(id=""), "NOT_FOUND")


def test_delete_with_an_empty_id_once_the_namespace_has_none_left(case: Case) -> None:
    """containerd answers UNKNOWN "incompatible value" here (its bolt store meets the end of an
    empty bucket); ctrpyd keeps NotFound (README's table, known.ALLOWED)."""
    case.same("containers", "Create", ct.CreateContainerRequest(container=ct.Container(
        id="c1", runtime=RUNTIME, spec=SPEC)))
    case.same("containers", "Delete", ct.DeleteContainerRequest(id="c1"))
    case.same("images", "Create", im.CreateImageRequest(image=im.Image(name="img", target=TARGET)))
    case.same("images", "Delete", im.DeleteImageRequest(name="img"))
    # The case's own lease is the namespace's only one: a namespace without leases is the
    # other one, after its lease went.
    case.same("leases", "Delete", ls.DeleteRequest(id=case.lease or ""), ns=case.other, lease=None)
    for service, method, request, ns in (
            ("containers", "Delete", ct.DeleteContainerRequest(id=""), case.ns),
            ("images", "Delete", im.DeleteImageRequest(name=""), case.ns),
            ("leases", "Delete", ls.DeleteRequest(id=""), case.other)):
        ref, ours = case.pair.check(service, method, request, ns)
        assert (ref.code, ref.message) == ("UNKNOWN", "incompatible value"), ref
        assert ours.code == "NOT_FOUND", ours
    for side in (case.pair.reference, case.pair.ctrpy):
        assert invoke(side, "containers", "List", ct.ListContainersRequest(), case.ns).reply == {}


def test_lease_resource_types_with_the_wrong_number_of_parts_are_invalid(case: Case) -> None:
    case.same("leases", "Create", ls.CreateRequest(id="l1"))
    rid = "sha256:" + "0" * 64
    for rtype, code in (("snapshots", "INVALID_ARGUMENT"), ("snapshots/overlayfs/x", "INVALID_ARGUMENT"),
                        ("content/x", "INVALID_ARGUMENT"), ("ingests/x", "INVALID_ARGUMENT"),
                        ("bogus", "UNIMPLEMENTED"), ("bogus/x", "UNIMPLEMENTED")):
        resource = ls.Resource(id=rid, type=rtype)
        case.same("leases", "AddResource", ls.AddResourceRequest(id="l1", resource=resource), code)
        case.same("leases", "DeleteResource", ls.DeleteResourceRequest(id="l1", resource=resource), code)
    case.same("leases", "ListResources", ls.ListResourcesRequest(id="l1"))


def test_namespace_update_meets_its_mask_in_order(bare: Case) -> None:
    """containerd sets each masked label in turn: the first bad path or label is the error."""
    update = nsp.UpdateNamespaceRequest
    ref = bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"": "v"}),
                                                   update_mask=mask("labels.", "labels")), "UNKNOWN")
    assert ref.message == "key required"  # kept: InvalidArgument here (README's table)
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"": "v"}),
                                             update_mask=mask("labels", "labels.")), "INVALID_ARGUMENT")
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"k": "v" * 4100}),
                                             update_mask=mask("labels.k", "bogus")), "UNKNOWN")
    bare.same("namespaces", "Update", update(namespace=nsp.Namespace(name=bare.other, labels={"k": "v"}),
                                             update_mask=mask("labels.", "labels.k")))
    bare.same("namespaces", "Get", nsp.GetNamespaceRequest(name=bare.other))
