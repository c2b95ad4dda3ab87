"""What the garbage collection tests share: ctr output as sets, blobs written under a lease,
a synchronous collection, and polling with a generous limit."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from ctrpy.api.containerd.services.content.v1 import content_pb2 as content_api
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from tests.support.ctrpyd import Daemon

T = TypeVar("T")

STAT = content_api.WriteAction.STAT
WRITE = content_api.WriteAction.WRITE
COMMIT = content_api.WriteAction.COMMIT
BUSYBOX = "docker.io/library/busybox:latest"
EXPIRE = "containerd.io/gc.expire"


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"ctr failed: {result.args}\n{result.stdout}\n{result.stderr}"
    return result


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def in_seconds(seconds: float) -> str:
    """A ``gc.expire`` value ``seconds`` from now (negative: in the past)."""
    return rfc3339(datetime.now(UTC) + timedelta(seconds=seconds))


def content(daemon: Daemon, namespace: str = "default") -> set[str]:
    """The digests ``ctr content ls`` shows in ``namespace``."""
    return set(ok(daemon.ctr("content", "ls", "-q", namespace=namespace)).stdout.split())


def snapshots(daemon: Daemon, namespace: str = "default") -> dict[str, str]:
    """``ctr snapshots ls`` in ``namespace`` as {key: kind}."""
    lines = ok(daemon.ctr("snapshots", "ls", namespace=namespace)).stdout.splitlines()[1:]
    return {fields[0]: fields[-1] for fields in (line.split() for line in lines) if fields}


def leases(daemon: Daemon, namespace: str = "default") -> set[str]:
    return set(ok(daemon.ctr("leases", "ls", "-q", namespace=namespace)).stdout.split())


def blob_file(daemon: Daemon, digest: str) -> Path:
    return daemon.root / "content" / "blobs" / "sha256" / digest.split(":", 1)[1]


def backend_snapshots(daemon: Daemon, snapshotter: str = "overlayfs") -> list[Path]:
    """The snapshot directories the backend holds on disk."""
    directory = daemon.root / "snapshots" / snapshotter / "snapshots"
    return sorted(directory.iterdir()) if directory.exists() else []


def collect(daemon: Daemon, namespace: str = "default") -> None:
    """Run a collection and wait for it, through the stock ctr: remove a lease made for the
    purpose with ``--sync``."""
    lease = f"gc-trigger-{uuid.uuid4().hex[:8]}"
    ok(daemon.ctr("leases", "create", "--id", lease, namespace=namespace))
    ok(daemon.ctr("leases", "rm", "--sync", lease, namespace=namespace))


def create_lease(daemon: Daemon, lease: str, namespace: str = "default", **labels: str) -> None:
    """A lease with exactly ``labels`` (ctr always adds an expiry; this does not)."""
    with daemon.client(namespace) as client:
        client.call(client.leases.Create, leases_pb2.CreateRequest(id=lease, labels=labels))


def write_blob(
    daemon: Daemon,
    data: bytes,
    namespace: str = "default",
    lease: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> str:
    """Write ``data`` as a blob of ``namespace`` (under ``lease``, with ``labels``); its digest."""
    with daemon.client(namespace) as client, client.using_lease(lease) if lease else contextlib.nullcontext():
        stream = client.duplex(client.content.Write)
        ref = f"blob-{uuid.uuid4().hex[:8]}"
        stream.send(content_api.WriteContentRequest(action=STAT, ref=ref, total=len(data)))
        stream.send(content_api.WriteContentRequest(action=WRITE, data=data))
        reply = stream.send(
            content_api.WriteContentRequest(
                action=COMMIT, total=len(data), offset=len(data), labels=dict(labels or {})
            )
        )
        stream.close()
    assert reply.digest == digest_of(data)
    return reply.digest


def ingests(daemon: Daemon, namespace: str = "default") -> set[str]:
    """The refs of the namespace's ingests (Content.ListStatuses)."""
    with daemon.client(namespace) as client:
        reply = client.call(client.content.ListStatuses, content_api.ListStatusesRequest())
    return {status.ref for status in reply.statuses}


def wait_for(check: Callable[[], T], what: str, limit: float = 60.0) -> T:
    """Poll ``check`` until it returns something true; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still not so after {limit:.0f}s (last: {result!r})")
        time.sleep(0.1)
