"""Differential state machine over the metadata services: namespaces, containers, images,
leases (with resources), content (incl. ingests) and introspection.

Every call goes to containerd and ctrpyd; see :mod:`tests.differential.pair` for what is
compared and :mod:`tests.differential.known` for the divergences kept on purpose.
"""

from __future__ import annotations

import hashlib
from typing import Any

from google.protobuf import any_pb2, empty_pb2
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule, run_state_machine_as_test

from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as ct
from ctrpy.api.containerd.services.content.v1 import content_pb2 as cn
from ctrpy.api.containerd.services.images.v1 import images_pb2 as im
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2 as intro
from ctrpy.api.containerd.services.leases.v1 import leases_pb2 as ls
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2 as nsp
from ctrpy.api.containerd.types import descriptor_pb2
from tests.differential.machine import (
    BAD_IDS,
    DiffMachine,
    filters,
    ids,
    labels,
    mask,
    masks,
)
from tests.differential.pair import Pair, sorted_statuses

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
RUNTIMES = ["io.containerd.runc.v2", "", "rt"]
IMAGE_NAMES = ["img", "docker.io/library/x:latest", "", "a b", "img@sha256:" + "0" * 64]
BLOBS = [b"hello", b"", b"x" * 1000, b"other"]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


DIGESTS = [digest(b) for b in BLOBS] + ["sha256:" + "0" * 64, "sha256:zz", "md5:abc", ""]
digests = st.sampled_from(DIGESTS)
REFS = ["r1", "r2", "", "bad/ref x", "r" * 300]
refs = st.sampled_from(REFS)
MEDIA_TYPES = ["application/vnd.oci.image.manifest.v1+json", ""]
RESOURCE_TYPES = ["content", "snapshots/overlayfs", "ingests", "bogus", "snapshots/", "snapshots"]
RESOURCE_IDS = DIGESTS[:2] + ["r1", "a", ""]
PLUGIN_FILTERS = ["", "type==io.containerd.snapshotter.v1", "id==overlayfs",
                  "type==io.containerd.grpc.v1,id==containers", "id~=^over", "type!=x",
                  "id==overlayfs,id==native", "type==io.containerd.content.v1", "id==\""]


def spec(value: bytes = b"{}") -> any_pb2.Any:
    return any_pb2.Any(type_url=SPEC_URL, value=value)


def mine(prefix: str):  # type: ignore[no-untyped-def]
    """Keep only this example's namespaces in a Namespaces.List reply."""

    def keep(reply: Any) -> Any:
        return {**reply, "namespaces": [n for n in reply.get("namespaces", [])
                                        if n.get("name", "").startswith(prefix)]}

    return keep


class MetadataMachine(DiffMachine):
    def __init__(self) -> None:
        super().__init__()
        self.names = [*self.namespaces, f"{self.prefix}-n"]
        # The blobs are salted per example: the content store is shared by all namespaces of
        # a daemon, and what an earlier example left there must not change this one.
        self.salt = self.prefix.encode()
        self.salted = {digest(b): digest(self.salt + b) for b in BLOBS}
        # Digests each namespace holds (per containerd), and every digest committed in the
        # example, to know when a blob was deleted from every namespace that held it.
        self.held: dict[str, set[str]] = {ns: set() for ns in self.namespaces}
        self.stored: set[str] = set()

    def d(self, value: str) -> str:
        """A digest (or any id) of the shared lists, translated to this example's blobs."""
        return self.salted.get(value, value)

    def namespaces_to_remove(self) -> list[str]:
        return self.names

    # -- namespaces -------------------------------------------------------------------------

    @rule(which=st.integers(0, 2), labels=labels)
    def ns_create(self, which: int, labels: dict[str, str]) -> None:
        self.call("namespaces", "Create", nsp.CreateNamespaceRequest(
            namespace=nsp.Namespace(name=self.names[which], labels=labels)))

    @rule(which=st.integers(0, 2), bad=st.sampled_from(["", *BAD_IDS]) | st.none())
    def ns_get(self, which: int, bad: str | None) -> None:
        self.call("namespaces", "Get", nsp.GetNamespaceRequest(name=bad if bad is not None else self.names[which]))

    @rule(flt=filters)
    def ns_list(self, flt: list[str]) -> None:
        self.call("namespaces", "List", nsp.ListNamespacesRequest(filter=",".join(flt)),
                  keep=mine(self.prefix))

    @rule(which=st.integers(0, 2), labels=labels, paths=masks)
    def ns_update(self, which: int, labels: dict[str, str], paths: list[str] | None) -> None:
        self.call("namespaces", "Update", nsp.UpdateNamespaceRequest(
            namespace=nsp.Namespace(name=self.names[which], labels=labels), update_mask=mask(paths)))

    @rule(which=st.integers(0, 2))
    def ns_delete(self, which: int) -> None:
        self.call("namespaces", "Delete", nsp.DeleteNamespaceRequest(name=self.names[which]))

    # -- containers -------------------------------------------------------------------------

    @rule(cid=ids, labels=labels, image=st.sampled_from(IMAGE_NAMES), runtime=st.sampled_from(RUNTIMES),
          with_spec=st.booleans(), snapshot=st.sampled_from([("", ""), ("overlayfs", "a"), ("", "a"),
                                                             ("overlayfs", "")]),
          ext=st.sampled_from([{}, {"x": spec()}, {"": spec()}]), ns=st.integers(0, 1))
    def container_create(self, cid: str, labels: dict[str, str], image: str, runtime: str,
                         with_spec: bool, snapshot: tuple[str, str], ext: dict[str, Any], ns: int) -> None:
        container = ct.Container(id=cid, labels=labels, image=image, snapshotter=snapshot[0],
                                 snapshot_key=snapshot[1], extensions=ext,
                                 runtime=ct.Container.Runtime(name=runtime))
        if with_spec:
            container.spec.CopyFrom(spec())
        self.call("containers", "Create", ct.CreateContainerRequest(container=container), self.ns(ns))

    @rule(cid=ids, ns=st.integers(0, 1))
    def container_get(self, cid: str, ns: int) -> None:
        self.call("containers", "Get", ct.GetContainerRequest(id=cid), self.ns(ns))

    @rule(flt=filters, ns=st.integers(0, 1), stream=st.booleans())
    def container_list(self, flt: list[str], ns: int, stream: bool) -> None:
        if stream:
            self.call("containers", "ListStream", ct.ListContainersRequest(filters=flt), self.ns(ns))
        else:
            self.call("containers", "List", ct.ListContainersRequest(filters=flt), self.ns(ns))

    @rule(cid=ids, labels=labels, paths=masks, image=st.sampled_from(IMAGE_NAMES),
          runtime=st.sampled_from(RUNTIMES), ns=st.integers(0, 1), with_spec=st.booleans())
    def container_update(self, cid: str, labels: dict[str, str], paths: list[str] | None, image: str,
                         runtime: str, ns: int, with_spec: bool) -> None:
        container = ct.Container(id=cid, labels=labels, image=image,
                                 runtime=ct.Container.Runtime(name=runtime))
        if with_spec:
            container.spec.CopyFrom(spec(b'{"ociVersion": "1"}'))
        self.call("containers", "Update", ct.UpdateContainerRequest(container=container, update_mask=mask(paths)),
                  self.ns(ns))

    @rule(cid=ids, ns=st.integers(0, 1))
    def container_delete(self, cid: str, ns: int) -> None:
        self.call("containers", "Delete", ct.DeleteContainerRequest(id=cid), self.ns(ns))

    # -- images -----------------------------------------------------------------------------

    @rule(name=st.sampled_from(IMAGE_NAMES), labels=labels, dgst=digests,
          media=st.sampled_from(MEDIA_TYPES), ns=st.integers(0, 1))
    def image_create(self, name: str, labels: dict[str, str], dgst: str, media: str, ns: int) -> None:
        image = im.Image(name=name, labels=labels, target=descriptor_pb2.Descriptor(
            media_type=media, digest=self.d(dgst), size=5))
        self.call("images", "Create", im.CreateImageRequest(image=image), self.ns(ns))

    @rule(name=st.sampled_from(IMAGE_NAMES), ns=st.integers(0, 1))
    def image_get(self, name: str, ns: int) -> None:
        self.call("images", "Get", im.GetImageRequest(name=name), self.ns(ns))

    @rule(flt=filters, ns=st.integers(0, 1))
    def image_list(self, flt: list[str], ns: int) -> None:
        self.call("images", "List", im.ListImagesRequest(filters=flt), self.ns(ns))

    @rule(name=st.sampled_from(IMAGE_NAMES), labels=labels, paths=masks, dgst=digests,
          media=st.sampled_from(MEDIA_TYPES), ns=st.integers(0, 1))
    def image_update(self, name: str, labels: dict[str, str], paths: list[str] | None, dgst: str,
                     media: str, ns: int) -> None:
        image = im.Image(name=name, labels=labels, target=descriptor_pb2.Descriptor(
            media_type=media, digest=self.d(dgst), size=7))
        self.call("images", "Update", im.UpdateImageRequest(image=image, update_mask=mask(paths)), self.ns(ns))

    @rule(name=st.sampled_from(IMAGE_NAMES), ns=st.integers(0, 1), sync=st.booleans())
    def image_delete(self, name: str, ns: int, sync: bool) -> None:
        self.call("images", "Delete", im.DeleteImageRequest(name=name, sync=sync), self.ns(ns))

    # -- leases -----------------------------------------------------------------------------

    @rule(lid=ids, labels=labels, ns=st.integers(0, 1))
    def lease_create(self, lid: str, labels: dict[str, str], ns: int) -> None:
        if lid == "":  # containerd generates an id: compared apart from it
            self.call("leases", "Create", ls.CreateRequest(labels=labels), self.ns(ns), ignore=["id"])
            return
        self.call("leases", "Create", ls.CreateRequest(id=lid, labels=labels), self.ns(ns))

    @rule(flt=filters, ns=st.integers(0, 1))
    def lease_list(self, flt: list[str], ns: int) -> None:
        # Leases created without an id differ in id only: compare the rest.
        self.call("leases", "List", ls.ListRequest(filters=[f for f in flt if not f.startswith("id")]),
                  self.ns(ns), ignore=["id"], keep=_sorted_leases)

    @rule(lid=ids, ns=st.integers(0, 1), sync=st.booleans())
    def lease_delete(self, lid: str, ns: int, sync: bool) -> None:
        self.call("leases", "Delete", ls.DeleteRequest(id=lid, sync=sync), self.ns(ns))

    @rule(lid=ids, rid=st.sampled_from(RESOURCE_IDS), rtype=st.sampled_from(RESOURCE_TYPES),
          ns=st.integers(0, 1), add=st.booleans())
    def lease_resource(self, lid: str, rid: str, rtype: str, ns: int, add: bool) -> None:
        resource = ls.Resource(id=self.d(rid), type=rtype)
        if add:
            self.call("leases", "AddResource", ls.AddResourceRequest(id=lid, resource=resource), self.ns(ns))
        else:
            self.call("leases", "DeleteResource", ls.DeleteResourceRequest(id=lid, resource=resource),
                      self.ns(ns))

    @rule(lid=ids, ns=st.integers(0, 1))
    def lease_list_resources(self, lid: str, ns: int) -> None:
        self.call("leases", "ListResources", ls.ListResourcesRequest(id=lid), self.ns(ns), unordered=True)

    # -- content ----------------------------------------------------------------------------

    @rule(blob=st.sampled_from(BLOBS), ref=refs, ns=st.integers(0, 1), labels=labels,
          how=st.sampled_from(["whole", "stat-first", "partial", "wrong-digest", "wrong-size",
                               "no-expected", "bad-offset", "commit-only"]))
    def content_write(self, blob: bytes, ref: str, ns: int, labels: dict[str, str], how: str) -> None:
        w = cn.WriteContentRequest
        blob = self.salt + blob
        total, expected = len(blob), digest(blob)
        namespace = self.ns(ns)
        if expected in self.stored and not any(expected in held for held in self.held.values()):
            # Deleted from every namespace: containerd keeps the file until its collector
            # runs, and shares it still; ctrpyd removed it at the last Delete (see the README).
            self.ingest_failed()
        if how == "whole":
            reqs = [w(action=cn.WRITE, ref=ref, total=total, expected=expected, data=blob),
                    w(action=cn.COMMIT, ref=ref, total=total, expected=expected, offset=total, labels=labels)]
        elif how == "stat-first":
            reqs = [w(action=cn.STAT, ref=ref),
                    w(action=cn.COMMIT, ref=ref, total=total, expected=expected, data=blob, labels=labels)]
        elif how == "partial":
            reqs = [w(action=cn.WRITE, ref=ref, total=total, expected=expected, data=blob[:2])]
        elif how == "wrong-digest":
            reqs = [w(action=cn.COMMIT, ref=ref, total=total, expected=DIGESTS[4], data=blob)]
        elif how == "wrong-size":
            reqs = [w(action=cn.COMMIT, ref=ref, total=total + 1, expected=expected, data=blob)]
        elif how == "no-expected":
            reqs = [w(action=cn.COMMIT, ref=ref, total=total, data=blob)]
        elif how == "bad-offset":
            reqs = [w(action=cn.WRITE, ref=ref, total=total, offset=10_000, data=blob)]
        else:
            reqs = [w(action=cn.COMMIT, ref=ref, total=total, expected=expected, offset=total)]
        # containerd sends one more reply (a copy of the last) after the client half-closes;
        # clients read one reply per request and never see it: compared up to there.
        ref, _ = self.call("content", "Write", reqs, namespace, keep=lambda replies: replies[: len(reqs)])
        if ref.code not in ("OK", "ALREADY_EXISTS") and "must have a reference" not in ref.message:
            self.ingest_failed()
        if ref.code == "OK" and reqs[-1].action == cn.COMMIT:
            self.held[namespace].add(ref.reply[-1].get("digest", "") if ref.reply else "")
            self.stored |= self.held[namespace]

    @rule(dgst=digests, ns=st.integers(0, 1))
    def content_info(self, dgst: str, ns: int) -> None:
        self.call("content", "Info", cn.InfoRequest(digest=self.d(dgst)), self.ns(ns))

    @rule(dgst=digests, ns=st.integers(0, 1), labels=labels, paths=masks)
    def content_update(self, dgst: str, ns: int, labels: dict[str, str], paths: list[str] | None) -> None:
        self.call("content", "Update", cn.UpdateRequest(info=cn.Info(digest=self.d(dgst), labels=labels, size=99),
                                                        update_mask=mask(paths)), self.ns(ns))

    @rule(flt=filters, ns=st.integers(0, 1))
    def content_list(self, flt: list[str], ns: int) -> None:
        self.call("content", "List", cn.ListContentRequest(filters=flt), self.ns(ns), keep=_flat_infos)

    @rule(dgst=digests, ns=st.integers(0, 1))
    def content_delete(self, dgst: str, ns: int) -> None:
        ref, _ = self.call("content", "Delete", cn.DeleteContentRequest(digest=self.d(dgst)), self.ns(ns))
        if ref.code == "OK":
            self.deleted.add(self.d(dgst))
            self.held[self.ns(ns)].discard(self.d(dgst))

    @rule(dgst=digests, ns=st.integers(0, 1), offset=st.sampled_from([0, 1, 4, 5, 2000, -1]),
          size=st.sampled_from([0, 1, 3, 10_000, -1]))
    def content_read(self, dgst: str, ns: int, offset: int, size: int) -> None:
        self.call("content", "Read", cn.ReadContentRequest(digest=self.d(dgst), offset=offset, size=size), self.ns(ns),
                  keep=_joined_data)

    @rule(ref=refs, ns=st.integers(0, 1))
    def content_status(self, ref: str, ns: int) -> None:
        self.call("content", "Status", cn.StatusRequest(ref=ref), self.ns(ns))

    @rule(flt=filters, ns=st.integers(0, 1))
    def content_list_statuses(self, flt: list[str], ns: int) -> None:
        self.call("content", "ListStatuses", cn.ListStatusesRequest(filters=flt), self.ns(ns),
                  keep=sorted_statuses)

    @rule(ref=refs, ns=st.integers(0, 1))
    def content_abort(self, ref: str, ns: int) -> None:
        self.call("content", "Abort", cn.AbortRequest(ref=ref), self.ns(ns))

    # -- introspection and version ----------------------------------------------------------

    @rule(flt=st.lists(st.sampled_from(PLUGIN_FILTERS), max_size=2))
    def plugins(self, flt: list[str]) -> None:
        self.call("introspection", "Plugins", intro.PluginsRequest(filters=flt),
                  keep=_plugin_view(common_plugins(self.pair)))

    @rule()
    def server(self) -> None:
        self.call("introspection", "Server", empty_pb2.Empty(), ignore=["uuid"])


def _sorted_leases(reply: Any) -> Any:
    return {**reply, "leases": sorted(reply.get("leases", []), key=repr)}


def _flat_infos(reply: Any) -> Any:
    """Content.List streams batches; compare the infos, whatever the batching."""
    return sorted((info for batch in reply for info in batch.get("info", [])), key=repr)


def _joined_data(reply: Any) -> Any:
    """Content.Read streams chunks; compare the bytes read and where they start."""
    if not reply:
        return reply
    return {"offset": reply[0].get("offset", 0), "data": b"".join(r.get("data", b"") for r in reply)}


_COMMON: dict[int, set[tuple[str, str]]] = {}


def common_plugins(pair: Pair) -> set[tuple[str, str]]:
    """The (type, id) of the plugins both daemons have (ctrpyd has fewer, and some of its
    own): filters are compared on these."""
    if id(pair) not in _COMMON:
        sets = []
        for side in (pair.reference, pair.ctrpy):
            reply = side.stubs["introspection"].Plugins(intro.PluginsRequest(), timeout=20)
            sets.append({(p.type, p.id) for p in reply.plugins})
        _COMMON[id(pair)] = sets[0] & sets[1]
    return _COMMON[id(pair)]


def _plugin_view(common: set[tuple[str, str]]):  # type: ignore[no-untyped-def]
    """Plugins: compare which of the common plugins a filter selects, in order."""

    def keep(reply: Any) -> Any:
        return sorted((p.get("type", ""), p.get("id", "")) for p in reply.get("plugins", [])
                      if (p.get("type", ""), p.get("id", "")) in common)

    return keep


def test_metadata_services(pair: Pair) -> None:
    class Machine(MetadataMachine):
        pass

    Machine.pair = pair
    run_state_machine_as_test(Machine, settings=settings.get_profile("differential"))
