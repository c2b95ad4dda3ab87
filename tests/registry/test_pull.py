"""Resolve and fetch against a real registry (docker-registry on loopback, filled by skopeo)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from ctrpy.errors import NotFound
from ctrpy.images import mediatypes, platforms
from ctrpy.images.model import Descriptor, parse_manifest
from ctrpy.manager.registry import Remote, Session, Unauthorized, plan
from ctrpy.manager.registry.auth import StaticCredentials, parse_user
from ctrpy.manager.registry.errors import DigestMismatch, TooLarge
from ctrpy.manager.registry.session import Options
from tests.registry.conftest import OTHER_ARCH, USER, Pushed, run
from tests.support.registry import LocalRegistry


async def _collect(remote: Remote, ref: str, desc: Descriptor, offset: int = 0) -> bytes:
    out = bytearray()
    async for chunk in remote.fetch_blob(ref, desc, offset):
        out += chunk
    return bytes(out)


def test_resolve_and_fetch_an_oci_image(pushed: Pushed) -> None:
    ref = f"{pushed.host}/library/busybox:latest"

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            resolved = await remote.resolve(ref)
            assert resolved.descriptor.digest == pushed.busybox.manifest_digest
            assert resolved.descriptor.size == pushed.busybox.manifest_size
            assert resolved.descriptor.media_type == mediatypes.OCI_MANIFEST
            assert str(resolved.ref) == f"{ref}@{pushed.busybox.manifest_digest}"
            image = await plan(remote, resolved, platforms.default())
            assert image.manifests[0][1].config.digest == pushed.busybox.config_digest
            assert set(image.documents) == {pushed.busybox.manifest_digest, pushed.busybox.config_digest}
            [layer] = image.layers()
            assert layer.digest == pushed.busybox.layers[0].digest
            data = await _collect(remote, ref, layer)
            assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest
            # Resume from the middle: exactly the tail comes back.
            tail = await _collect(remote, ref, layer, offset=len(data) // 2)
            assert tail == data[len(data) // 2:]
            assert await _collect(remote, ref, layer, offset=len(data)) == b""

    run(scenario)


def test_resolve_by_digest_and_by_tag_and_digest(pushed: Pushed) -> None:
    digest = pushed.busybox.manifest_digest

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            by_digest = await remote.resolve(f"{pushed.host}/library/busybox@{digest}")
            assert by_digest.descriptor.digest == digest
            both = await remote.resolve(f"{pushed.host}/library/busybox:nonexistent-tag@{digest}")
            assert both.descriptor.digest == digest
            wrong = "sha256:" + "0" * 64
            with pytest.raises(NotFound):
                await remote.resolve(f"{pushed.host}/library/busybox@{wrong}")
            with pytest.raises(NotFound):
                await remote.resolve(f"{pushed.host}/library/busybox:nope")
            with pytest.raises(NotFound):
                await remote.resolve(f"{pushed.host}/library/absent:latest")

    run(scenario)


def test_docker_schema2_manifest(pushed: Pushed) -> None:
    ref = f"{pushed.host}/library/multilayer:v2s2"

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            resolved = await remote.resolve(ref)
            assert resolved.descriptor.media_type == mediatypes.DOCKER_MANIFEST
            assert resolved.descriptor.digest == pushed.multilayer_digest
            image = await plan(remote, resolved, platforms.default())
            layers = image.layers()
            assert [layer.media_type for layer in layers] == [mediatypes.DOCKER_LAYER_GZIP] * len(layers)
            assert len(layers) == len(pushed.multilayer.layers)
            for layer in layers:
                data = await _collect(remote, ref, layer)
                assert len(data) == layer.size

    run(scenario)


def test_index_selects_this_platform_unless_all_are_asked(pushed: Pushed) -> None:
    ref = f"{pushed.host}/library/multi:latest"

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            resolved = await remote.resolve(ref)
            assert resolved.descriptor.media_type == mediatypes.OCI_INDEX
            assert resolved.descriptor.digest == pushed.index_digest
            mine = await plan(remote, resolved, platforms.default())
            assert [d.digest for d, _ in mine.manifests] == [pushed.native_manifest]
            assert mine.platforms == (platforms.default_spec(),)
            everything = await plan(remote, resolved, None)
            assert {d.digest for d, _ in everything.manifests} == {pushed.native_manifest, pushed.other_manifest}
            other = await plan(remote, resolved, platforms.only_strict(platforms.parse(f"linux/{OTHER_ARCH}")))
            assert [d.digest for d, _ in other.manifests] == [pushed.other_manifest]
            with pytest.raises(NotFound, match="no match for platform"):
                await plan(remote, resolved, platforms.only_strict(platforms.parse("linux/s390x")))

    run(scenario)


def test_fetch_document_checks_limits_and_digests(pushed: Pushed) -> None:
    ref = f"{pushed.host}/library/busybox:latest"

    async def scenario() -> None:
        async with Session(Options(max_document=256)) as session:
            remote = Remote(session, plain_http=True)
            resolved = await remote.resolve(ref)  # HEAD: the size is known without the body
            with pytest.raises(TooLarge):
                await remote.fetch_document(ref, resolved.descriptor)
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            resolved = await remote.resolve(ref)
            data = await remote.fetch_document(ref, resolved.descriptor)
            manifest = parse_manifest(data)
            # A descriptor that lies about the size or digest is caught.
            lying = Descriptor(manifest.config.media_type, manifest.config.digest, manifest.config.size - 1)
            with pytest.raises(DigestMismatch):
                await remote.fetch_document(ref, lying)
            with pytest.raises(DigestMismatch):
                await _collect(remote, ref, Descriptor(mediatypes.OCI_LAYER_GZIP, manifest.layers[0].digest,
                                                       manifest.layers[0].size - 10))

    run(scenario)


def test_basic_auth_against_htpasswd(auth_registry: tuple[LocalRegistry, object]) -> None:
    registry, _ = auth_registry
    ref = f"{registry.host}/private/busybox:latest"

    async def scenario() -> None:
        async with Session() as session:
            good = Remote(session, plain_http=True, credentials=StaticCredentials(parse_user(":".join(USER))))
            resolved = await good.resolve(ref)
            image = await plan(good, resolved, platforms.default())
            [layer] = image.layers()
            assert len(await _collect(good, ref, layer)) == layer.size

            anonymous = Remote(session, plain_http=True)
            with pytest.raises(Unauthorized, match=f"registry {registry.host}: .*authentication required"):
                await anonymous.resolve(ref)
            wrong = Remote(session, plain_http=True, credentials=StaticCredentials(parse_user("alice:nope")))
            with pytest.raises(Unauthorized, match=f"registry {registry.host}: .*failed as 'alice'"):
                await wrong.resolve(ref)

    run(scenario)


def test_concurrent_fetches_and_early_stops_share_one_session(pushed: Pushed) -> None:
    ref = f"{pushed.host}/library/multilayer:v2s2"

    async def scenario() -> None:
        async with Session() as session:
            remote = Remote(session, plain_http=True)
            image = await plan(remote, await remote.resolve(ref), platforms.default())
            layers = image.layers()
            # A consumer that stops after the first chunk closes the stream and its response.
            for layer in layers:
                stream = remote.fetch_blob(ref, layer)
                async for _ in stream:
                    break
                await stream.aclose()
            blobs = await asyncio.gather(*(_collect(remote, ref, layer) for layer in layers * 3))
            for layer, data in zip(layers * 3, blobs):
                assert "sha256:" + hashlib.sha256(data).hexdigest() == layer.digest

    run(scenario)
