"""Push primitives against a real registry, checked by skopeo: an image read from one registry
is pushed to another under a new name and comes out with the same digests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

import pytest

from ctrpy.errors import FailedPrecondition
from ctrpy.images import mediatypes, platforms
from ctrpy.images.model import Descriptor
from ctrpy.manager.registry import Remote, Session, plan
from ctrpy.manager.registry.auth import StaticCredentials, parse_user
from ctrpy.manager.registry.push import Uploaded, blob_exists, put_manifest, upload_blob
from tests.registry.conftest import USER, Pushed, run
from tests.support.registry import LocalRegistry, skopeo_inspect_raw


def test_push_round_trip_with_skopeo(pushed: Pushed, fresh_registry: LocalRegistry) -> None:
    source = f"{pushed.host}/library/multilayer:v2s2"
    target = f"{fresh_registry.host}/copies/multilayer:pushed"

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            resolved = await remote.resolve(source)
            image = await plan(remote, resolved, platforms.default())
            [(manifest_desc, manifest)] = image.manifests
            layers = image.layers()

            def opener(layer: Descriptor):  # a fresh stream per call, as upload_blob may restart
                async def stream() -> AsyncIterator[bytes]:
                    async for chunk in remote.fetch_blob(source, layer):
                        yield chunk
                return stream

            results = []
            for position, layer in enumerate(layers):
                # Alternate monolithic streamed and chunked uploads.
                chunk = None if position % 2 == 0 else max(1, layer.size // 3)
                results.append(await upload_blob(remote, target, layer, opener(layer), chunk_size=chunk))
            config = image.documents[manifest.config.digest]
            results.append(await upload_blob(remote, target, manifest.config, config, chunk_size=100))
            assert set(results) == {Uploaded.UPLOADED}
            # Everything is there now: a second push sends nothing.
            for layer in layers:
                assert await blob_exists(remote, target, layer)
                assert await upload_blob(remote, target, layer, b"unused") is Uploaded.EXISTED
            await put_manifest(remote, target, manifest_desc, image.documents[manifest_desc.digest])
            # Another repository of the same registry mounts instead of uploading.
            other = f"{fresh_registry.host}/elsewhere/multilayer:mounted"
            mounted = await upload_blob(remote, other, layers[0], b"unused", mount_from="copies/multilayer")
            assert mounted is Uploaded.MOUNTED
            assert await blob_exists(remote, other, layers[0])

    run(scenario)
    raw = skopeo_inspect_raw(target)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == pushed.multilayer_digest
    assert json.loads(raw)["mediaType"] == mediatypes.DOCKER_MANIFEST


def test_manifest_naming_a_missing_blob_is_refused(fresh_registry: LocalRegistry) -> None:
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": "sha256:" + "3" * 64, "size": 2},
        "layers": []}).encode()
    desc = Descriptor(mediatypes.OCI_MANIFEST, "sha256:" + hashlib.sha256(manifest).hexdigest(), len(manifest))

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            with pytest.raises(FailedPrecondition, match=f"registry {fresh_registry.host}: .*400"):
                await put_manifest(remote, f"{fresh_registry.host}/x/y:tag", desc, manifest)

    run(scenario)


def test_push_with_basic_auth(auth_registry: tuple[LocalRegistry, object]) -> None:
    registry, _ = auth_registry
    blob = b"hello, registry\n" * 1000
    desc = Descriptor(mediatypes.OCI_LAYER, "sha256:" + hashlib.sha256(blob).hexdigest(), len(blob))

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True, credentials=StaticCredentials(parse_user(":".join(USER))))
            ref = f"{registry.host}/private/blobs:latest"
            assert await upload_blob(remote, ref, desc, blob) is Uploaded.UPLOADED
            assert await blob_exists(remote, ref, desc)

    run(scenario)
