"""runtime.v1.ImageService against a real ctrpyd and a loopback registry, through the generated
CRI client: pulls (by tag and by digest: one image), listing, status by every kind of name,
removal of every tag, the image filesystem, credentials, and images shared with
``ctr -n k8s.io`` in both directions."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from ctrpy.errors import CtrpyError, InvalidArgument
from ctrpy.testimage.archive import write_archive
from ctrpy.testimage.images import busybox_image
from tests.cri.conftest import MIRRORED, USER, CriDaemon, Images


def _by_id(cri: CriClient, image_id: str) -> list[api.Image]:
    return [image for image in cri.list_images() if image.id == image_id]


@pytest.fixture
def busybox(cri: CriClient, cri_images: Images) -> Iterator[str]:
    """busybox pulled by tag; removed (every name) afterwards."""
    image_id = cri.pull_image(f"{cri_images.host}/library/busybox:1")
    try:
        yield image_id
    finally:
        cri.remove_image(image_id)


def test_pull_answers_the_image_id_and_names_it_three_ways(
        cri: CriClient, cri_images: Images, cri_daemon: CriDaemon, busybox: str) -> None:
    host = cri_images.host
    assert busybox == cri_images.busybox.config_digest
    listed = cri_daemon.daemon.ctr("images", "ls", "-q", namespace="k8s.io")
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    manifest = cri_images.busybox.manifest_digest
    assert {f"{host}/library/busybox:1", f"{host}/library/busybox@{manifest}", busybox} <= names
    labels = cri_daemon.daemon.ctr("images", "ls", namespace="k8s.io").stdout
    assert "io.cri-containerd.image=managed" in labels


def test_pull_by_tag_and_by_digest_give_one_image(cri: CriClient, cri_images: Images, busybox: str) -> None:
    host = cri_images.host
    digest_ref = f"{host}/library/busybox@{cri_images.busybox.manifest_digest}"
    assert cri.pull_image(digest_ref) == busybox
    assert cri.pull_image(f"{host}/library/busybox:same") == busybox
    (image,) = _by_id(cri, busybox)
    assert sorted(image.repo_tags) == [f"{host}/library/busybox:1", f"{host}/library/busybox:same"]
    assert list(image.repo_digests) == [digest_ref]
    info = cri_images.busybox
    expected_size = info.manifest_size + info.config_size + sum(layer.size for layer in info.layers)
    assert image.size == expected_size
    assert image.spec.image == busybox
    assert not image.pinned
    assert not image.HasField("uid") and image.username == ""


def test_image_status_by_id_short_id_tag_digest_and_without_registry_prefix(
        cri: CriClient, cri_images: Images, busybox: str) -> None:
    host = cri_images.host
    names = [busybox, busybox.removeprefix("sha256:"), busybox.removeprefix("sha256:")[:12],
             f"{host}/library/busybox:1", f"{host}/library/busybox@{cri_images.busybox.manifest_digest}"]
    for name in names:
        image, info = cri.image_status(name)
        assert image is not None, name
        assert image.id == busybox and info == {}


def test_image_status_verbose_info_has_the_config(cri: CriClient, busybox: str) -> None:
    image, info = cri.image_status(busybox, verbose=True)
    assert image is not None
    details = json.loads(info["info"])
    assert details["imageSpec"]["config"]["Cmd"] == ["sh"]
    assert details["chainID"].startswith("sha256:")


def test_a_missing_image_is_an_empty_status_and_removing_it_is_ok(cri: CriClient) -> None:
    for name in ("127.0.0.1:1/nothing/here:1", "sha256:" + "0" * 64, "nothing-by-that-name"):
        assert cri.image_status(name) == (None, {})
        cri.remove_image(name)
    response = cri.call(cri.images.ImageStatus, api.ImageStatusRequest(image=api.ImageSpec(image="absent")))
    assert not response.HasField("image")


def test_remove_image_removes_every_tag_and_digest(
        cri: CriClient, cri_images: Images, cri_daemon: CriDaemon) -> None:
    host = cri_images.host
    image_id = cri.pull_image(f"{host}/library/busybox:1")
    cri.pull_image(f"{host}/library/busybox:same")
    cri.remove_image(f"{host}/library/busybox:same")  # by one tag: the whole image goes
    assert _by_id(cri, image_id) == []
    assert cri.image_status(f"{host}/library/busybox:1") == (None, {})
    listed = cri_daemon.daemon.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
    assert not [name for name in listed if "library/busybox" in name or name == image_id]


def test_short_names_are_normalised_and_ctr_imports_are_seen(
        cri: CriClient, cri_daemon: CriDaemon, tmp_path_factory: pytest.TempPathFactory) -> None:
    """An image imported with the stock ctr into k8s.io under docker.io/library/shorty:latest
    is found by the CRI as ``shorty`` (and removed through the CRI, gone for ctr)."""
    archive = tmp_path_factory.mktemp("cri-import") / "shorty.tar"
    info = write_archive(busybox_image("docker.io/library/shorty:latest"), archive)
    imported = cri_daemon.daemon.ctr("images", "import", str(archive), namespace="k8s.io", timeout=120)
    assert imported.returncode == 0, imported.stderr
    image, _ = cri.image_status("shorty")
    assert image is not None
    assert image.id == info.config_digest
    assert list(image.repo_tags) == ["docker.io/library/shorty:latest"]
    assert cri.image_status("docker.io/library/shorty")[0] == image
    assert [i.id for i in cri.list_images("shorty")] == [info.config_digest]
    cri.remove_image("shorty")
    listed = cri_daemon.daemon.ctr("images", "ls", "-q", namespace="k8s.io").stdout.split()
    assert "docker.io/library/shorty:latest" not in listed


def test_user_of_the_image_config(cri: CriClient, cri_images: Images) -> None:
    host = cri_images.host
    uid_id = cri.pull_image(f"{host}/library/user-uid:1")
    name_id = cri.pull_image(f"{host}/library/user-name:1")
    try:
        (by_uid,) = _by_id(cri, uid_id)
        assert by_uid.HasField("uid") and by_uid.uid.value == 1002 and by_uid.username == ""
        (by_name,) = _by_id(cri, name_id)
        assert not by_name.HasField("uid") and by_name.username == "www-data"
    finally:
        cri.remove_image(uid_id)
        cri.remove_image(name_id)


def test_stream_images_sends_what_list_images_lists(cri: CriClient, busybox: str) -> None:
    assert sorted(i.id for i in cri.stream_images()) == sorted(i.id for i in cri.list_images())
    assert busybox in {i.id for i in cri.stream_images()}


def test_image_fs_info_reports_the_snapshotter_directory(cri: CriClient, cri_daemon: CriDaemon, busybox: str) -> None:
    answer = cri.image_fs_info()
    (images_fs,) = answer.image_filesystems
    (containers_fs,) = answer.container_filesystems
    assert images_fs.fs_id.mountpoint == str(cri_daemon.daemon.root / "snapshots" / "overlayfs")
    assert containers_fs.fs_id.mountpoint == images_fs.fs_id.mountpoint
    assert images_fs.used_bytes.value > 500_000  # the static busybox unpacked
    assert images_fs.inodes_used.value > 10
    assert images_fs.timestamp > 0


def test_pull_with_credentials(cri: CriClient, cri_images: Images) -> None:
    ref = f"{cri_images.private.host}/library/private:1"
    expected = cri_images.private_image.config_digest
    with pytest.raises(CtrpyError):
        cri.pull_image(ref)
    with pytest.raises(CtrpyError):
        cri.pull_image(ref, auth=api.AuthConfig(username=USER[0], password="wrong"))
    try:
        assert cri.pull_image(ref, auth=api.AuthConfig(username=USER[0], password=USER[1])) == expected
        cri.remove_image(expected)
        encoded = base64.b64encode(f"{USER[0]}:{USER[1]}".encode()).decode()
        auth = api.AuthConfig(auth=encoded, server_address=f"http://{cri_images.private.host}")
        assert cri.pull_image(ref, auth=auth) == expected
    finally:
        cri.remove_image(expected)
    # Credentials for another registry are not sent.
    elsewhere = api.AuthConfig(username=USER[0], password=USER[1], server_address="registry.example")
    with pytest.raises(CtrpyError):
        cri.pull_image(ref, auth=elsewhere)


def test_bad_requests(cri: CriClient) -> None:
    with pytest.raises(InvalidArgument):
        cri.pull_image("")
    with pytest.raises(InvalidArgument):
        cri.pull_image("UPPER/case:1")
    with pytest.raises(InvalidArgument):
        cri.pull_image("127.0.0.1:1/a:1", auth=api.AuthConfig(auth="not base64!"))


def test_pull_through_the_hosts_directory_keeps_the_name(cri: CriClient, cri_images: Images) -> None:
    """``[cri] registry_config_path`` holds registry.k8s.io/hosts.toml with the loopback registry
    as its mirror: the image is pulled from there and named as asked."""
    ref = f"{MIRRORED}/library/busybox:1"
    image_id = cri.pull_image(ref)
    try:
        assert image_id == cri_images.busybox.config_digest
        image, _ = cri.image_status(ref)
        assert image is not None and list(image.repo_tags) == [ref]
        assert list(image.repo_digests) == [f"{MIRRORED}/library/busybox@{cri_images.busybox.manifest_digest}"]
    finally:
        cri.remove_image(image_id)


def test_images_listed_again_see_what_ctr_tags_and_removes(
        cri: CriClient, cri_daemon: CriDaemon, busybox: str) -> None:
    """The CRI keeps its list of images until an image event: a tag made and removed with the
    stock ctr between two ListImages shows in the second (ctrpy.manager.cri.images)."""
    (image,) = _by_id(cri, busybox)  # lists, and so fills the kept list
    source = image.repo_tags[0]
    extra = "docker.io/library/retagged:2"
    tagged = cri_daemon.daemon.ctr("images", "tag", source, extra, namespace="k8s.io")
    assert tagged.returncode == 0, tagged.stderr
    assert extra in _by_id(cri, busybox)[0].repo_tags
    assert cri.image_status("retagged:2")[0] is not None
    removed = cri_daemon.daemon.ctr("images", "rm", extra, namespace="k8s.io")
    assert removed.returncode == 0, removed.stderr
    assert extra not in _by_id(cri, busybox)[0].repo_tags
    assert cri.image_status("retagged:2")[0] is None
