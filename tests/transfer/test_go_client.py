"""The Transfer API driven the way containerd 2.x's ``ctr images pull`` drives it, message by
message (core/transfer/proxy, core/transfer/registry, core/streaming/proxy): a progress stream
and a credentials stream opened on the Streaming service first (StreamInit, then the server's
Empty), an ImageStore with all_metadata, one platform and one unpack, an OCIRegistry with
default_scheme "http" and an auth stream that answers with an empty REFRESH secret (no --user)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

import grpc
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from ctrpy.api.containerd.services.streaming.v1 import streaming_pb2, streaming_pb2_grpc
from ctrpy.api.containerd.services.transfer.v1 import transfer_pb2, transfer_pb2_grpc
from ctrpy.api.containerd.types import platform_pb2
from ctrpy.api.containerd.types.transfer import imagestore_pb2, progress_pb2, registry_pb2
from ctrpy.images import content, snapshots, store
from ctrpy.images.platforms import default_spec
from tests.support.ctrpyd import Daemon

from .conftest import Filled


def _any(message: Message) -> any_pb2.Any:
    return any_pb2.Any(type_url=message.DESCRIPTOR.full_name, value=message.SerializeToString())


class _GoStream:
    def __init__(self, channel: object, metadata: tuple[tuple[str, str], ...], name: str) -> None:
        self.outgoing: queue.SimpleQueue[any_pb2.Any | None] = queue.SimpleQueue()
        self.outgoing.put(_any(streaming_pb2.StreamInit(id=name)))
        self.call = streaming_pb2_grpc.StreamingStub(channel).Stream(self._requests(), metadata=metadata)
        ack = next(self.call)
        assert ack.type_url.rsplit("/", 1)[-1] == "google.protobuf.Empty"
        empty_pb2.Empty.FromString(ack.value)

    def _requests(self) -> Iterator[any_pb2.Any]:
        while (item := self.outgoing.get()) is not None:
            yield item


def test_pull_as_ctr_2_does(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    ref = f"{filled.host}/library/busybox:1"
    spec = default_spec()
    host = platform_pb2.Platform(os=spec.os, architecture=spec.architecture, variant=spec.variant)
    with ctrpyd.client(namespace) as client:
        progress = _GoStream(client.channel, client.metadata, "progress-1234")
        creds = _GoStream(client.channel, client.metadata, "creds-5678")
        events: list[progress_pb2.Progress] = []
        auth_requests: list[registry_pb2.AuthRequest] = []

        def read_progress() -> None:
            for message in progress.call:
                assert message.type_url == "containerd.types.transfer.Progress"
                events.append(progress_pb2.Progress.FromString(message.value))

        def answer_credentials() -> None:
            with contextlib.suppress(grpc.RpcError):  # cancelled at the end, as ctr's context is
                for message in creds.call:
                    auth_requests.append(registry_pb2.AuthRequest.FromString(message.value))
                    creds.outgoing.put(_any(registry_pb2.AuthResponse(authType=registry_pb2.REFRESH, secret="")))

        threads = [threading.Thread(target=read_progress), threading.Thread(target=answer_credentials, daemon=True)]
        for thread in threads:
            thread.start()
        source = registry_pb2.OCIRegistry(reference=ref, resolver=registry_pb2.RegistryResolver(
            auth_stream="creds-5678", default_scheme="http"))
        destination = imagestore_pb2.ImageStore(
            name=ref, platforms=[host], all_metadata=True,
            unpacks=[imagestore_pb2.UnpackConfiguration(platform=host)])
        request = transfer_pb2.TransferRequest(source=_any(source), destination=_any(destination),
                                               options=transfer_pb2.TransferOptions(progress_stream="progress-1234"))
        transfer_pb2_grpc.TransferStub(client.channel).Transfer(request, metadata=client.metadata, timeout=120)
        threads[0].join(30)  # the server ends the progress stream when the transfer is done
        assert not threads[0].is_alive()
        progress.outgoing.put(None)
        creds.outgoing.put(None)
        creds.call.cancel()

        # Credentials are asked for only when a registry challenges (this one does not), per
        # host, as containerd's authorizer asks its credentials callback.
        assert auth_requests == []
        names = {(e.event, e.name) for e in events}
        assert ("complete", filled.busybox.layers[0].digest) in names
        assert ("saved", ref) in names
        layer_events = [e for e in events if e.name == filled.busybox.layers[0].digest]
        assert layer_events[-1].desc.digest == filled.busybox.layers[0].digest
        assert store.get(client, ref).target.digest == filled.busybox.manifest_digest
        snapshots.stat(client, "overlayfs", filled.busybox.chain_ids[-1])


def test_all_metadata_fetches_every_manifest_but_unpacks_one(ctrpyd: Daemon, namespace: str,
                                                              filled: Filled) -> None:
    """ctr 2.x sets all_metadata: the other platforms' manifests and configs are stored (the
    index stays browsable), layers and unpacking only for the platform asked for."""
    ref = f"{filled.host}/library/multi:latest"
    spec = default_spec()
    host = platform_pb2.Platform(os=spec.os, architecture=spec.architecture, variant=spec.variant)
    source = registry_pb2.OCIRegistry(reference=ref, resolver=registry_pb2.RegistryResolver(default_scheme="http"))
    destination = imagestore_pb2.ImageStore(name=ref, platforms=[host], all_metadata=True,
                                            unpacks=[imagestore_pb2.UnpackConfiguration(platform=host)])
    with ctrpyd.client(namespace) as client:
        request = transfer_pb2.TransferRequest(source=_any(source), destination=_any(destination))
        transfer_pb2_grpc.TransferStub(client.channel).Transfer(request, metadata=client.metadata, timeout=120)
        assert store.get(client, ref).target.digest == filled.index_digest
        for digest in (filled.native.manifest_digest, filled.other.manifest_digest, filled.other.config_digest):
            content.info(client, digest)
        index_labels = content.info(client, filled.index_digest).labels
        assert {filled.native.manifest_digest, filled.other.manifest_digest} <= set(index_labels.values())
        assert snapshots.stat(client, "overlayfs", filled.native.chain_ids[-1])
        other_config = content.info(client, filled.other.config_digest).labels
        assert not any(key.startswith("containerd.io/gc.ref.snapshot.") for key in other_config)
