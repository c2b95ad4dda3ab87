"""Image records and leases over the real socket."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from ctrpy import errors
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.types import descriptor_pb2
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound
from tests.support.ctrpyd import Daemon

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def make_image(name: str, digest: str = DIGEST_A, **labels: str) -> images_pb2.Image:
    return images_pb2.Image(
        name=name,
        labels=labels,
        target=descriptor_pb2.Descriptor(
            media_type=MANIFEST, digest=digest, size=528, annotations={"org.opencontainers.image.ref.name": "latest"}
        ),
    )


def test_image_import_flow_update_not_found_then_create(daemon: Daemon) -> None:
    """ctr's import: Images.Update with mask target answers NotFound, then Images.Create."""
    name = "docker.io/library/busybox:latest"
    with daemon.client() as client:
        with pytest.raises(NotFound, match=f'image "{name}": not found'):
            client.call(
                client.images.Update,
                images_pb2.UpdateImageRequest(image=make_image(name), update_mask=field_mask_pb2.FieldMask(paths=["target"])),
            )
        created = client.call(client.images.Create, images_pb2.CreateImageRequest(image=make_image(name))).image
        assert created.target.digest == DIGEST_A and created.target.size == 528
        assert dict(created.target.annotations) == {"org.opencontainers.image.ref.name": "latest"}
        with pytest.raises(AlreadyExists):
            client.call(client.images.Create, images_pb2.CreateImageRequest(image=make_image(name)))
        # Re-import with another target: Update with mask target replaces the target only.
        updated = client.call(
            client.images.Update,
            images_pb2.UpdateImageRequest(
                image=make_image(name, DIGEST_B, junk="x"), update_mask=field_mask_pb2.FieldMask(paths=["target"])
            ),
        ).image
        assert updated.target.digest == DIGEST_B and dict(updated.labels) == {}
        listed = client.call(client.images.List, images_pb2.ListImagesRequest(filters=[f"target.digest=={DIGEST_B}"]))
        assert [image.name for image in listed.images] == [name]
        client.call(client.images.Delete, images_pb2.DeleteImageRequest(name=name))
        with pytest.raises(NotFound):
            client.call(client.images.Get, images_pb2.GetImageRequest(name=name))


def test_image_validation(daemon: Daemon) -> None:
    with daemon.client() as client:
        bad_digest = make_image("x:1", digest="sha256:../../etc")
        with pytest.raises(InvalidArgument):
            client.call(client.images.Create, images_pb2.CreateImageRequest(image=bad_digest))
        with pytest.raises(InvalidArgument):
            client.call(client.images.Create, images_pb2.CreateImageRequest(image=make_image("")))
        assert not client.call(client.images.List, images_pb2.ListImagesRequest()).images


def test_lease_resources(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.call(client.leases.Create, leases_pb2.CreateRequest(id="l1", labels={"a": "b"}))
        resource = leases_pb2.Resource(id=DIGEST_A, type="content")
        snapshot = leases_pb2.Resource(id="extract-1 sha256:abc", type="snapshots/overlayfs")
        client.call(client.leases.AddResource, leases_pb2.AddResourceRequest(id="l1", resource=resource))
        client.call(client.leases.AddResource, leases_pb2.AddResourceRequest(id="l1", resource=snapshot))
        listed = client.call(client.leases.ListResources, leases_pb2.ListResourcesRequest(id="l1")).resources
        assert {(r.type, r.id) for r in listed} == {("content", DIGEST_A), ("snapshots/overlayfs", "extract-1 sha256:abc")}
        client.call(client.leases.DeleteResource, leases_pb2.DeleteResourceRequest(id="l1", resource=resource))
        listed = client.call(client.leases.ListResources, leases_pb2.ListResourcesRequest(id="l1")).resources
        assert [r.type for r in listed] == ["snapshots/overlayfs"]
        # containerd answers UNIMPLEMENTED for a resource type it does not know.
        with pytest.raises(errors.NotImplemented, match="resource type bogus not supported yet"):
            client.call(
                client.leases.AddResource,
                leases_pb2.AddResourceRequest(id="l1", resource=leases_pb2.Resource(id="x", type="bogus")),
            )
        with pytest.raises(NotFound):
            client.call(client.leases.AddResource, leases_pb2.AddResourceRequest(id="nope", resource=resource))
        with pytest.raises(AlreadyExists):
            client.call(client.leases.Create, leases_pb2.CreateRequest(id="l1"))
        assert [lease.id for lease in client.call(client.leases.List, leases_pb2.ListRequest(filters=["labels.a==b"])).leases] == ["l1"]
        client.call(client.leases.Delete, leases_pb2.DeleteRequest(id="l1"))
        with pytest.raises(NotFound):
            client.call(client.leases.ListResources, leases_pb2.ListResourcesRequest(id="l1"))
