"""The test-image builder: deterministic, well-formed, and accepted by the real containerd."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.testimage import (
    EVIL_NAME,
    Image,
    ImageInfo,
    Layer,
    busybox_image,
    chain_ids,
    diff_trees,
    expected_tree,
    host_arch,
    hostile_image,
    hostile_layers,
    large_image,
    multilayer_image,
    read_member,
    scan_tree,
    write_archive,
    write_docker_archive,
    write_oci_layout_tar,
)
from ctrpy.testimage.__main__ import parse_size
from tests.support.containerd import (
    ReferenceContainerd,
    mounts_under,
    reference_containerd,
    shim_pids,
)

needs_containerd = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("containerd") or not shutil.which("runc"),
    reason="needs root, containerd and runc")


def small_large_image() -> Image:
    return large_image(3 << 20, layers=3, seed=7, file_size=1 << 20)


IMAGES = {
    "busybox": busybox_image,
    "multilayer": multilayer_image,
    "large": small_large_image,
}


def members(path: Path) -> dict[str, bytes]:
    """Every regular member of a tar, by name."""
    out = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                out[member.name] = extracted.read()
    return out


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- pure builder tests ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["oci", "docker"])
@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_two_builds_give_identical_bytes(tmp_path: Path, kind: str, fmt: str) -> None:
    first = write_archive(IMAGES[kind](), tmp_path / "a.tar", fmt)
    second = write_archive(IMAGES[kind](), tmp_path / "b.tar", fmt)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert first == second


def test_oci_layout_is_well_formed(tmp_path: Path) -> None:
    image = multilayer_image()
    info = write_oci_layout_tar(image, tmp_path / "ml.tar")
    files = members(tmp_path / "ml.tar")

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert sha(data) == "sha256:" + name.rsplit("/", 1)[1]

    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    [descriptor] = index["manifests"]
    assert descriptor["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert descriptor["digest"] == info.manifest_digest
    assert descriptor["annotations"] == {
        "io.containerd.image.name": "docker.io/library/multilayer:latest",
        "org.opencontainers.image.ref.name": "latest",
    }

    manifest = json.loads(files["blobs/sha256/" + descriptor["digest"][7:]])
    assert len(files["blobs/sha256/" + descriptor["digest"][7:]]) == descriptor["size"]
    assert manifest["config"]["digest"] == info.config_digest
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"] * 3
    for layer, layer_info in zip(manifest["layers"], info.layers, strict=True):
        blob = files["blobs/sha256/" + layer["digest"][7:]]
        assert len(blob) == layer["size"] == layer_info.size
        assert blob[:2] == b"\x1f\x8b" and blob[4:8] == b"\0\0\0\0"  # gzip, mtime 0

    config = json.loads(files["blobs/sha256/" + info.config_digest[7:]])
    assert config["os"] == "linux"
    assert config["architecture"] == host_arch()
    assert config["config"]["Env"][0].startswith("PATH=")
    assert config["rootfs"] == {"type": "layers", "diff_ids": list(info.diff_ids)}
    assert len(config["history"]) == 3


@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_diff_ids_are_the_sha256_of_the_uncompressed_layers(tmp_path: Path, fmt: str) -> None:
    info = write_archive(multilayer_image(), tmp_path / "ml.tar", fmt)
    files = members(tmp_path / "ml.tar")
    blobs = {sha(data): data for data in files.values()}
    for layer in info.layers:
        raw = blobs[layer.digest]
        if fmt == "oci":
            raw = gzip.decompress(raw)
        assert sha(raw) == layer.diff_id
        assert len(raw) == layer.uncompressed_size
    # chain(n) = sha256(chain(n-1) + " " + diff(n)), written out independently
    d = info.diff_ids
    second = sha(f"{d[0]} {d[1]}".encode())
    assert info.chain_ids == (d[0], second, sha(f"{second} {d[2]}".encode()))
    assert chain_ids(d) == info.chain_ids


def test_docker_archive_is_well_formed(tmp_path: Path) -> None:
    info = write_docker_archive(busybox_image(), tmp_path / "bb.tar")
    files = members(tmp_path / "bb.tar")
    [entry] = json.loads(files["manifest.json"])
    assert entry["RepoTags"] == ["busybox:latest"]
    assert sha(files[entry["Config"]]) == info.config_digest
    assert [sha(files[name]) for name in entry["Layers"]] == list(info.diff_ids)
    top = entry["Layers"][-1].split("/")[0]
    assert json.loads(files["repositories"]) == {"busybox": {"latest": top}}
    assert info.manifest_digest is None


def test_busybox_layer_holds_busybox_applets_and_base_files(tmp_path: Path) -> None:
    write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    manifest_digest = json.loads(read_member(tmp_path / "bb.tar", "index.json"))[
        "manifests"][0]["digest"]
    manifest = json.loads(read_member(tmp_path / "bb.tar", "blobs/sha256/" + manifest_digest[7:]))
    [layer] = manifest["layers"]
    blob = read_member(tmp_path / "bb.tar", "blobs/sha256/" + layer["digest"][7:])
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        by_name = {m.name: m for m in tar}
    busybox = by_name["bin/busybox"]
    assert busybox.isreg() and busybox.mode == 0o755
    assert busybox.size == os.path.getsize("/bin/busybox")
    for applet in ("sh", "echo", "cat", "ls", "sleep", "true", "id", "ps", "grep", "sed", "yes"):
        assert by_name[f"bin/{applet}"].issym()
        assert by_name[f"bin/{applet}"].linkname == "/bin/busybox"
    assert by_name["tmp"].isdir() and by_name["tmp"].mode == 0o1777
    for directory in ("proc", "sys", "dev", "root", "etc", "var", "run"):
        assert by_name[directory].isdir()
    assert all(m.mtime == by_name["bin"].mtime for m in by_name.values())
    assert list(by_name) == sorted(by_name, key=lambda n: n.split("/"))


def test_busybox_image_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="busybox-static"):
        busybox_image(busybox=str(tmp_path / "no-busybox"))


def test_expected_tree_applies_whiteouts_opaque_dirs_and_links() -> None:
    tree = expected_tree(multilayer_image())
    assert "/etc/removed.conf" not in tree
    assert tree["/etc/hostname"].content == sha(b"layer2\n")
    assert sorted(p for p in tree if p.startswith("/opt/app/old")) == [
        "/opt/app/old", "/opt/app/old/new.txt"]
    assert tree["/opt/app/old"].mode == 0o711
    assert sorted(p for p in tree if p.startswith("/var/cache/")) == ["/var/cache/new.txt"]
    assert tree["/var/cache"].mode == 0o775
    assert tree["/data/replaced"].kind == "dir"
    assert tree["/data/hello-link"] == tree["/data/hello.txt"]
    assert "/bin/tool2-link" not in tree
    assert tree["/bin/tool2-second"] == tree["/bin/tool2"]
    assert tree["/bin/setuid-tool"].mode == 0o4755
    assert tree["/home/user"].mode == 0o700
    assert (tree["/home/user/notes.txt"].uid, tree["/home/user/notes.txt"].gid) == (1000, 1000)
    assert tree["/data/xattr.txt"].xattrs == (("user.other", b"1"), ("user.x", b"hello"))
    assert tree["/dev/testnull"].content == "1,3"
    assert tree["/data/rel-link"].content == "hello.txt"


def test_large_image_is_incompressible_and_sized_as_asked(tmp_path: Path) -> None:
    image = large_image(5 << 20, layers=4, seed=3, file_size=1 << 20)
    info = write_oci_layout_tar(image, tmp_path / "large.tar")
    assert len(info.layers) == 4
    data = sum(e.size for layer in image.layers if isinstance(layer, Layer)
               for e in layer.entries)
    assert data == 5 << 20
    assert sum(layer.size for layer in info.layers) >= 5 << 20
    other = write_oci_layout_tar(large_image(5 << 20, layers=4, seed=4, file_size=1 << 20),
                                 tmp_path / "other.tar")
    assert set(info.diff_ids).isdisjoint(other.diff_ids)


def test_hostile_layers_keep_their_names(tmp_path: Path) -> None:
    layers = hostile_layers(bomb_size=3 << 20)
    names = {}
    for kind, layer in layers.items():
        raw = gzip.decompress(layer.blob)
        assert sha(raw) == layer.diff_id and len(raw) == layer.uncompressed_size
        assert layer.descriptor() == {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                      "digest": sha(layer.blob), "size": len(layer.blob)}
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            names[kind] = [(m.name, m.linkname) for m in tar]
    assert names["path_traversal"] == [(f"../{EVIL_NAME}", "")]
    assert names["absolute_path"] == [(f"/{EVIL_NAME}", "")]
    assert names["symlink_escape"] == [("escape", "/"), (f"escape/{EVIL_NAME}", "")]
    assert names["hardlink_escape"] == [("link", "../../etc/passwd")]
    bomb = layers["decompression_bomb"]
    assert bomb.uncompressed_size > 3 << 20 and len(bomb.blob) < 64 << 10
    # A hostile layer still makes a well-formed archive.
    info = write_oci_layout_tar(hostile_image("path_traversal"), tmp_path / "evil.tar")
    assert info.diff_ids == (layers["path_traversal"].diff_id,)


def test_cli_writes_an_archive_and_prints_its_info(tmp_path: Path) -> None:
    out = tmp_path / "bb.tar"
    result = subprocess.run(
        [sys.executable, "-m", "ctrpy.testimage", "busybox", str(out), "--format", "docker",
         "--name", "example.com/bb:1"],
        capture_output=True, text=True, check=True)
    printed = json.loads(result.stdout)
    assert printed["name"] == "example.com/bb:1" and printed["format"] == "docker"
    assert printed["archive_size"] == out.stat().st_size
    assert parse_size("200M") == 200 << 20 and parse_size("1g") == 1 << 30
    assert parse_size("512") == 512
    with pytest.raises(ValueError):
        parse_size("lots")


# --- against the reference containerd -------------------------------------------------------


@pytest.fixture
def ctrd(tmp_path: Path) -> Iterator[ReferenceContainerd]:
    with reference_containerd(tmp_path / "d") as daemon:
        yield daemon
    assert not mounts_under(tmp_path), "mounts left behind"
    assert not any(Path("/sys/fs/cgroup").glob(f"*/{daemon.namespace}"))


def image_refs(ctrd: ReferenceContainerd) -> list[str]:
    out: str = ctrd.ctr("images", "ls", "-q").stdout
    return out.split()


def import_archive(ctrd: ReferenceContainerd, path: Path) -> str:
    """Import and return the one image name the import created."""
    before = set(image_refs(ctrd))
    ctrd.ctr("images", "import", str(path), timeout=120)
    [name] = set(image_refs(ctrd)) - before
    return name


@needs_containerd
@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_containerd_imports_busybox_and_runs_it(ctrd: ReferenceContainerd, tmp_path: Path,
                                                fmt: str) -> None:
    info: ImageInfo = write_archive(busybox_image(), tmp_path / "bb.tar", fmt)
    name = import_archive(ctrd, tmp_path / "bb.tar")
    # Both formats come back under the full name: OCI from io.containerd.image.name, docker
    # by normalising the RepoTag "busybox:latest".
    assert name == "docker.io/library/busybox:latest"

    listing = ctrd.ctr("images", "ls").stdout
    assert name in listing
    if fmt == "oci":
        assert info.manifest_digest in listing
    check = ctrd.ctr("images", "check").stdout.splitlines()[1]
    assert check.split()[0] == name and "complete" in check

    snapshot = ctrd.ctr("snapshots", "info", info.chain_ids[-1]).stdout
    assert info.chain_ids[-1] in snapshot

    result = ctrd.ctr("run", "--rm", *ctrd.run_flags(), name, "t1", "echo", "hi")
    assert result.stdout == "hi\n"
    result = ctrd.ctr("run", "--rm", *ctrd.run_flags(), name, "t2", "cat", "/etc/passwd")
    assert result.stdout.startswith("root:x:0:0:")


@needs_containerd
@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_containerd_unpacks_multilayer_to_the_expected_tree(
        ctrd: ReferenceContainerd, tmp_path: Path, fmt: str) -> None:
    image = multilayer_image()
    write_archive(image, tmp_path / "ml.tar", fmt)
    name = import_archive(ctrd, tmp_path / "ml.tar")
    assert name == image.name

    target = ctrd.directory / "mnt"
    target.mkdir()
    ctrd.ctr("images", "mount", name, str(target))
    try:
        differences = diff_trees(expected_tree(image), scan_tree(target))
        same_inode = os.stat(target / "data/hello.txt").st_ino == os.stat(
            target / "data/hello-link").st_ino
    finally:
        ctrd.ctr("images", "unmount", "--rm", str(target))
    assert differences == []
    assert same_inode
    assert not mounts_under(target)


def _exited(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


@needs_containerd
@pytest.mark.parametrize("daemon_dies", [False, True])
def test_reference_containerd_cleans_up_after_a_failure(tmp_path: Path,
                                                        daemon_dies: bool) -> None:
    write_oci_layout_tar(busybox_image(), tmp_path / "bb.tar")
    name = "docker.io/library/busybox:latest"
    with pytest.raises(RuntimeError, match="test failed"), \
            reference_containerd(tmp_path / "d") as ctrd:
        ctrd.ctr("images", "import", str(tmp_path / "bb.tar"))
        ctrd.ctr("run", "-d", *ctrd.run_flags(), name, "sleeper", "sleep", "1000")
        target = ctrd.directory / "mnt"
        target.mkdir()
        ctrd.ctr("images", "mount", name, str(target))
        shims = shim_pids(ctrd.address)
        assert len(shims) == 1
        assert any(Path("/sys/fs/cgroup").glob(f"*/{ctrd.namespace}/sleeper"))
        if daemon_dies:
            assert ctrd.process is not None
            os.kill(ctrd.process.pid, signal.SIGKILL)
            ctrd.process.wait()
        raise RuntimeError("test failed")
    assert ctrd.process is not None and ctrd.process.poll() is not None
    assert all(_exited(pid) for pid in shims)
    assert not mounts_under(tmp_path)
    assert not any(Path("/sys/fs/cgroup").glob(f"*/{ctrd.namespace}"))
