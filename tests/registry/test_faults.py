"""Faults the client must survive or report clearly: retries with Retry-After, broken and
stalled connections, resumes, lying registries, huge manifests, mirrors, and a registry killed
mid-layer. Scripted servers play the registries that misbehave on purpose."""

from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.parse
from pathlib import Path

import pytest

from ctrpy.errors import NotFound
from ctrpy.images import mediatypes, platforms
from ctrpy.images.model import Descriptor
from ctrpy.manager.registry import (
    DigestMismatch,
    RegistryStalled,
    RegistryUnavailable,
    Remote,
    Session,
    TooLarge,
    plan,
)
from ctrpy.manager.registry.session import Options, retry_after
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import large_image
from tests.registry.conftest import Pushed, run
from tests.support.registry import LocalRegistry, Reply, Request, scripted, skopeo_copy

FAST = Options(retries=3, backoff=0.02, max_backoff=0.1)
BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
BLOB_DESC = Descriptor(mediatypes.OCI_LAYER, BLOB_DIGEST, len(BLOB))
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
                       "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": BLOB_DIGEST, "size": 1},
                       "layers": []}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def ranged(request: Request, data: bytes, **reply: object) -> Reply:
    """Serve ``data`` honouring a ``Range: bytes=N-`` header."""
    match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("range", ""))
    if match is None:
        return Reply(200, {}, data, **reply)  # type: ignore[arg-type]
    start = int(match[1])
    return Reply(206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}, data[start:],
                 **reply)  # type: ignore[arg-type]


async def collect(remote: Remote, ref: str, desc: Descriptor, offset: int = 0) -> bytes:
    out = bytearray()
    async for chunk in remote.fetch_blob(ref, desc, offset):
        out += chunk
    return bytes(out)


def test_retry_after_parsing() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("Sun, 06 Dec 2026 00:00:10 GMT", now=1796515200.0) == 10.0


def test_503_then_success_honours_retry_after() -> None:
    answers = iter([Reply(503, {"Retry-After": "1"}), Reply(429, {"Retry-After": "0"})])

    def handler(request: Request) -> Reply:
        scripted_reply = next(answers, None)
        if scripted_reply is not None:
            return scripted_reply
        return Reply(200, {"Content-Type": mediatypes.OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST},
                     MANIFEST)

    with scripted(handler) as server:
        async def scenario() -> float:
            async with Session(FAST) as session:
                started = time.monotonic()
                resolved = await Remote(session, plain_http=True).resolve(f"{server.host}/a/b:tag")
                assert resolved.descriptor.digest == MANIFEST_DIGEST
                return time.monotonic() - started

        elapsed = run(scenario)
    assert elapsed >= 0.9  # the server asked for a second
    assert [r.method for r in server.requests] == ["HEAD", "HEAD", "HEAD"]


def test_persistent_5xx_gives_up_clearly() -> None:
    with scripted(lambda request: Reply(503)) as server:
        async def scenario() -> None:
            async with Session(FAST) as session:
                with pytest.raises(RegistryUnavailable, match=rf"registry {server.host}: .*503 \(after 4 attempts\)"):
                    await Remote(session, plain_http=True).resolve(f"{server.host}/a/b:tag")

        run(scenario)
    assert len(server.requests) == 4


def test_connection_refused_gives_up_clearly() -> None:
    with scripted(lambda request: Reply(404)) as server:
        host = server.host
    # The server is gone: nothing listens on its port any more.

    async def scenario() -> None:
        async with Session(FAST) as session:
            with pytest.raises(RegistryUnavailable, match=rf"registry {host}: .*ConnectError"):
                await Remote(session, plain_http=True).resolve(f"{host}/a/b:tag")

    run(scenario)


def test_broken_connection_resumes_with_range() -> None:
    cuts = iter([100_000, 600_000])

    def handler(request: Request) -> Reply:
        return ranged(request, BLOB, cut_after=next(cuts, None))

    with scripted(handler) as server:
        async def scenario() -> bytes:
            async with Session(FAST) as session:
                return await collect(Remote(session, plain_http=True), f"{server.host}/a/b", BLOB_DESC)

        assert run(scenario) == BLOB
    # Bodies are hashed as they come: no content encoding may be offered.
    assert {r.headers.get("accept-encoding") for r in server.requests} == {"identity"}
    ranges = [r.headers.get("range", "") for r in server.requests]
    assert ranges[0] == ""
    assert len(ranges) == 3 and all(re.fullmatch(r"bytes=\d+-", r) for r in ranges[1:]), ranges


def test_registry_ignoring_range_is_skipped_over() -> None:
    with scripted(lambda request: Reply(200, {}, BLOB)) as server:
        async def scenario() -> bytes:
            async with Session(FAST) as session:
                return await collect(Remote(session, plain_http=True), f"{server.host}/a/b", BLOB_DESC, 1000)

        assert run(scenario) == BLOB[1000:]


def test_stall_fails_with_a_clear_error() -> None:
    with scripted(lambda request: Reply(200, {}, BLOB, stall_after=4096, stall_for=30)) as server:
        async def scenario() -> None:
            async with Session(Options(stall_timeout=0.5, retries=0)) as session:
                with pytest.raises(RegistryStalled, match=rf"registry {server.host}: .*no progress for 0.5 s"):
                    await collect(Remote(session, plain_http=True), f"{server.host}/a/b", BLOB_DESC)

        started = time.monotonic()
        run(scenario, timeout=20)
        assert time.monotonic() - started < 15  # liveness, not speed


def test_blob_bytes_that_do_not_match_the_digest() -> None:
    corrupt = BLOB[:-1] + b"\x00"
    with scripted(lambda request: Reply(200, {}, corrupt)) as server:
        async def scenario() -> None:
            async with Session(FAST) as session:
                with pytest.raises(DigestMismatch, match=f"registry {server.host}: blob {BLOB_DIGEST}"):
                    await collect(Remote(session, plain_http=True), f"{server.host}/a/b", BLOB_DESC)

        run(scenario)


@pytest.mark.parametrize("head", [405, 200])
def test_manifest_contradicting_docker_content_digest(head: int) -> None:
    """With GET (HEAD refused), the header is checked against the bytes at once; with a HEAD
    that is trusted for the digest, the bytes are checked when the manifest is fetched."""
    wrong = "sha256:" + "1" * 64

    def handler(request: Request) -> Reply:
        if request.method == "HEAD" and head != 200:
            return Reply(head)
        return Reply(200, {"Content-Type": mediatypes.OCI_MANIFEST, "Docker-Content-Digest": wrong}, MANIFEST)

    with scripted(handler) as server:
        async def scenario() -> None:
            async with Session(FAST) as session:
                remote = Remote(session, plain_http=True)
                if head != 200:
                    with pytest.raises(DigestMismatch, match="Docker-Content-Digest"):
                        await remote.resolve(f"{server.host}/a/b:tag")
                else:
                    resolved = await remote.resolve(f"{server.host}/a/b:tag")
                    with pytest.raises(DigestMismatch, match=f"{wrong}: content has digest {MANIFEST_DIGEST}"):
                        await plan(remote, resolved, platforms.default())
                with pytest.raises(DigestMismatch, match=f"registry {server.host}: .*{wrong}"):
                    await remote.resolve(f"{server.host}/a/b@{MANIFEST_DIGEST}")

        run(scenario)


@pytest.mark.parametrize("head", [405, 200])
def test_manifest_by_digest_whose_bytes_differ(head: int) -> None:
    """No digest header: the client hashes what it got and compares with the reference."""
    other = MANIFEST.replace(b'"layers": []', b'"layers": [ ]')

    def handler(request: Request) -> Reply:
        if request.method == "HEAD" and head != 200:
            return Reply(head)
        return Reply(200, {"Content-Type": mediatypes.OCI_MANIFEST}, other)

    with scripted(handler) as server:
        async def scenario() -> None:
            async with Session(FAST) as session:
                remote = Remote(session, plain_http=True)
                ref = f"{server.host}/a/b@{MANIFEST_DIGEST}"
                if head != 200:
                    with pytest.raises(DigestMismatch, match=f"expected {MANIFEST_DIGEST}"):
                        await remote.resolve(ref)
                else:
                    resolved = await remote.resolve(ref)
                    with pytest.raises(DigestMismatch, match=f"{MANIFEST_DIGEST}: content has digest"):
                        await plan(remote, resolved, platforms.default())

        run(scenario)


def test_a_50_mib_manifest_is_refused_without_reading_it() -> None:
    def handler(request: Request) -> Reply:
        return Reply(200, {"Content-Type": mediatypes.OCI_MANIFEST}, b"{" * 1024, length=50 << 20)

    with scripted(handler) as server:
        async def scenario() -> None:
            async with Session(FAST) as session:
                with pytest.raises(TooLarge, match="exceed the limit"):
                    await Remote(session, plain_http=True).resolve(f"{server.host}/a/b:tag")

        run(scenario)


def test_manifest_naming_a_missing_blob(pushed: Pushed) -> None:
    ref = f"{pushed.host}/library/busybox:latest"

    async def scenario() -> None:
        async with Session(FAST) as session:
            remote = Remote(session, plain_http=True)
            missing = Descriptor(mediatypes.OCI_LAYER_GZIP, "sha256:" + "2" * 64, 10)
            with pytest.raises(NotFound, match="not found"):
                await collect(remote, ref, missing)
            with pytest.raises(NotFound, match="not found"):
                await remote.fetch_document(ref, Descriptor(mediatypes.OCI_CONFIG, missing.digest, 10))

    run(scenario)


def test_mirror_serves_an_upstream_name(pushed: Pushed, tmp_path: Path) -> None:
    """registry.k8s.io/pause:3.9 comes from the loopback registry, through a first mirror that
    has nothing (404) and must be passed over; the upstream itself is never contacted."""
    skopeo_copy(Path(pushed.busybox_archive), f"{pushed.host}/pause:3.9")
    with scripted(lambda request: Reply(404)) as empty:
        hosts = tmp_path / "certs.d" / "registry.k8s.io"
        hosts.mkdir(parents=True)
        (hosts / "hosts.toml").write_text(
            'server = "https://registry.k8s.io"\n\n'
            f'[host."http://{empty.host}"]\n  capabilities = ["pull", "resolve"]\n\n'
            f'[host."http://{pushed.host}"]\n  capabilities = ["pull", "resolve"]\n')

        async def scenario() -> None:
            async with Session(FAST) as session:
                remote = Remote(session, config_path=tmp_path / "certs.d")
                resolved = await remote.resolve("registry.k8s.io/pause:3.9")
                assert resolved.endpoint.host == pushed.host
                assert resolved.descriptor.digest == pushed.busybox.manifest_digest
                image = await plan(remote, resolved, platforms.default())
                [layer] = image.layers()
                assert len(await collect(remote, "registry.k8s.io/pause:3.9", layer)) == layer.size

        run(scenario)
    assert empty.requests, "the first mirror was not asked"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(empty.requests[0].path).query)
    assert query == {"ns": ["registry.k8s.io"]}


@pytest.mark.parametrize("offset_known", [True, False])
def test_registry_killed_mid_layer_then_resumed(tmp_path: Path, offset_known: bool) -> None:
    image = large_image(24 << 20, 1, seed=7, name="127.0.0.1/large:latest")
    write_archive(image, tmp_path / "large.tar")
    with LocalRegistry(tmp_path / "registry") as registry:
        ref = f"{registry.host}/large:latest"
        skopeo_copy(tmp_path / "large.tar", ref)

        async def scenario() -> None:
            async with Session(FAST) as session:
                remote = Remote(session, plain_http=True)
                resolved = await remote.resolve(ref)
                [layer] = (await plan(remote, resolved, platforms.default())).layers()
                got = bytearray()
                with pytest.raises(RegistryUnavailable, match=f"registry {registry.host}"):
                    async for chunk in remote.fetch_blob(ref, layer):
                        got += chunk
                        if registry.process is not None and len(got) >= (1 << 20):
                            registry.kill()
                assert 0 < len(got) < layer.size
                registry.start()
                offset = len(got) if offset_known else 0
                rest = await collect(remote, ref, layer, offset)
                whole = bytes(got[:offset]) + rest
                assert len(whole) == layer.size
                assert "sha256:" + hashlib.sha256(whole).hexdigest() == layer.digest

        run(scenario, timeout=120)

