"""Image records through the Images API: get, list, create or update, tag, delete."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import field_mask_pb2

from ctrpy import errors
from ctrpy.api.containerd.services.images.v1 import images_pb2 as api
from ctrpy.client import Client
from ctrpy.images.convert import image_from_proto, image_to_proto
from ctrpy.images.model import Image


def get(client: Client, name: str) -> Image:
    """The image called ``name``; raises NotFound (``image "x": not found``)."""
    return image_from_proto(client.call(client.images.Get, api.GetImageRequest(name=name)).image)


def list_images(client: Client, filters: Iterable[str] = ()) -> list[Image]:
    """Images matching any of ``filters``."""
    response = client.call(client.images.List, api.ListImagesRequest(filters=list(filters)))
    return [image_from_proto(image) for image in response.images]


def create(client: Client, image: Image) -> Image:
    """Create a record; raises AlreadyExists when the name is taken."""
    return image_from_proto(client.call(client.images.Create, api.CreateImageRequest(image=image_to_proto(image))).image)


def put(client: Client, image: Image) -> Image:
    """Point ``image.name`` at ``image.target``: update the target of an existing record (its
    labels stay), or create it, as ctr's import does (Update, then Create on NotFound)."""
    request = api.UpdateImageRequest(image=image_to_proto(image),
                                     update_mask=field_mask_pb2.FieldMask(paths=["target"]))
    try:
        return image_from_proto(client.call(client.images.Update, request).image)
    except errors.NotFound:
        return create(client, image)


def delete(client: Client, name: str, sync: bool = False) -> None:
    """Remove a record; raises NotFound when there is none."""
    client.call(client.images.Delete, api.DeleteImageRequest(name=name, sync=sync))


def tag(client: Client, source: str, targets: Iterable[str], force: bool = False) -> list[Image]:
    """Create records ``targets`` pointing where ``source`` points, inside a lease as ctr does.

    An existing target is an AlreadyExists error unless ``force``, which replaces it.
    Raises NotFound when ``source`` does not exist.
    """
    made: list[Image] = []
    with client.lease():
        original = get(client, source)
        for name in targets:
            image = Image(name, original.target, original.labels)
            try:
                made.append(create(client, image))
            except errors.AlreadyExists:
                if not force:
                    raise
                delete(client, name)
                made.append(create(client, image))
    return made
