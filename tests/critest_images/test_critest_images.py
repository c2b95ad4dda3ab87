"""critest's images, built by ``ctrpy.testimage.critest`` and served by a loopback registry through
hosts.toml mirrors under their upstream names: every name is there, images meant to differ have
ids of their own, builds repeat byte for byte, and ctrpyd pulls through the mirror both with
``ctrpy images pull --hosts-dir`` and with the CRI's PullImage (``[cri] registry_config_path``).

The busybox copied into the images is the host's static one here (CI installs busybox-static);
``scripts/critest-run`` builds them with Debian's dynamic busybox for the real suite."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.cri import CriClient
from ctrpy.images import store
from ctrpy.pause.elf import pause_executable
from ctrpy.pause.image import DEFAULT_NAME, pause_image
from ctrpy.testimage.archive import write_oci_layout_tar
from ctrpy.testimage.critest import HostTools, critest_images
from tests.support.containerd import remove_cgroups
from tests.support.critest_registry import SANDBOX_IMAGE, ServedImages, critest_registry
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
CTRPY = str(REPO / ".venv" / "bin" / "ctrpy")
TOOLS = HostTools(busybox="/bin/busybox")
NAMESPACE = f"critest-images-{secrets.token_hex(3)}"

# Building and pushing the 27 names takes 10-15 s of the module's ~20 s.
pytestmark = pytest.mark.slow

if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
    pytest.skip("docker-registry and skopeo are needed (scripts/bootstrap --dev installs them)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedImages]:
    with critest_registry(tmp_path_factory.mktemp("critest-registry"), TOOLS) as images:
        yield images


@pytest.fixture(scope="module")
def ctrpyd(tmp_path_factory: pytest.TempPathFactory, served: ServedImages) -> Iterator[Daemon]:
    """A ctrpyd whose CRI pulls through the hosts directory of ``served``."""
    base = tmp_path_factory.mktemp("critest-daemon")
    (base / "net.d").mkdir()
    config = base / "ctrpyd.toml"
    config.write_text(f'version = 1\n[cri]\ncni_conf_dir = "{base / "net.d"}"\nstats_collect_period = 0\n'
                      f'registry_config_path = "{served.hosts_dir}"\n')
    instance = Daemon(extra_args=("--config", str(config)))
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()
        remove_cgroups(NAMESPACE)  # the empty cgroup directory of the namespace ctr ran in


def test_every_upstream_name_is_served_at_its_path(served: ServedImages) -> None:
    expected = {name for item in served.images for name in item.names}
    assert {"registry.k8s.io/e2e-test-images/busybox:1.29-2", "k8s.gcr.io/pause:3.9",
            "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
            "public.ecr.aws/docker/library/busybox:1.35.0-glibc", SANDBOX_IMAGE} <= expected
    assert set(served.infos) == expected
    for name, info in served.infos.items():
        if name != SANDBOX_IMAGE:  # its layer is a plain tar, which skopeo gzips on the way
            assert served.digests[name] == info.manifest_digest, name
    for host in ("registry.k8s.io", "k8s.gcr.io", "gcr.io", "public.ecr.aws"):
        text = (served.hosts_dir / host / "hosts.toml").read_text()
        assert f'[host."http://{served.registry.host}"]' in text
        assert 'capabilities = ["pull", "resolve"]' in text


def test_images_meant_to_differ_have_ids_of_their_own(served: ServedImages) -> None:
    ids = [served.infos[item.names[0]].config_digest for item in served.images]
    assert len(set(ids)) == len(ids)
    for group in served.images:  # every name of one image: one id
        assert len({served.infos[name].config_digest for name in group.names}) == 1
    # The pause:3.9 critest counts tags of is not the pause image ctrpyd sandboxes with.
    own = write_oci_layout_tar(pause_image(DEFAULT_NAME), served.hosts_dir.parent / "own-pause.tar")
    assert served.infos["registry.k8s.io/pause:3.9"].config_digest != own.config_digest
    assert served.infos[SANDBOX_IMAGE].config_digest == own.config_digest


def test_image_configs_say_what_critest_expects(served: ServedImages) -> None:
    by_name = {name: item.image for item in served.images for name in item.names}
    users = {f"gcr.io/k8s-staging-cri-tools/test-image-user-{suffix}:latest": user
             for suffix, user in (("uid", "1002"), ("username", "www-data"), ("uid-group", "1003:1004"),
                                  ("username-group", "www-data:1004"))}
    for name, user in users.items():
        assert by_name[name].user == user
    assert by_name["gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest"].user == "1000"
    nginx = by_name["registry.k8s.io/e2e-test-images/nginx:1.14-2"]
    assert "master process" in nginx.cmd[-1] and "-p 80 " in nginx.cmd[2]
    arch = nginx.architecture
    hostnet = by_name[f"gcr.io/k8s-staging-cri-tools/hostnet-nginx-{arch}:latest"]
    assert "-p 12003 " in hostnet.cmd[2]


def test_builds_repeat_byte_for_byte(tmp_path: Path) -> None:
    first, second = (critest_images(TOOLS, pause_executable()) for _ in range(2))
    for index in (0, 5):  # busybox:1.29-2 (the big base layer) and pause:3.9
        a = write_oci_layout_tar(first[index].image, tmp_path / "a.tar")
        b = write_oci_layout_tar(second[index].image, tmp_path / "b.tar")
        assert a.manifest_digest == b.manifest_digest
        assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()


def _ctrpy(ctrpyd: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CTRPY_ADDRESS": str(ctrpyd.address), "CTRPY_NAMESPACE": NAMESPACE}
    return subprocess.run([CTRPY, *args], capture_output=True, text=True, env=env, timeout=180,
                          stdin=subprocess.DEVNULL)


def test_ctrpy_pull_resolves_through_the_mirror(ctrpyd: Daemon, served: ServedImages) -> None:
    """The hosts.toml servers are a closed loopback port: only the mirror can answer."""
    result = _ctrpy(ctrpyd, "images", "pull", "--hosts-dir", str(served.hosts_dir), "registry.k8s.io/pause:3.9")
    assert result.returncode == 0, result.stderr
    with ctrpyd.client(NAMESPACE) as client:
        image = store.get(client, "registry.k8s.io/pause:3.9")
    assert image.target.digest == served.digests["registry.k8s.io/pause:3.9"]


def test_cri_pull_through_the_mirror_gives_one_image_for_two_registries(
        ctrpyd: Daemon, served: ServedImages) -> None:
    pause = served.infos["registry.k8s.io/pause:3.9"]
    with CriClient(str(ctrpyd.address), 180) as cri:
        assert cri.pull_image("registry.k8s.io/pause:3.9") == pause.config_digest
        assert cri.pull_image("k8s.gcr.io/pause:3.9") == pause.config_digest
        (image,) = [image for image in cri.list_images() if image.id == pause.config_digest]
        assert sorted(image.repo_tags) == ["k8s.gcr.io/pause:3.9", "registry.k8s.io/pause:3.9"]
        name = "gcr.io/k8s-staging-cri-tools/test-image-user-username-group"
        cri.pull_image(name)
        status, _ = cri.image_status(name)
        assert status is not None and status.username == "www-data"
        assert status.repo_tags == [name + ":latest"]
        cri.remove_image(pause.config_digest)
        assert cri.image_status("k8s.gcr.io/pause:3.9")[0] is None


def test_nginx_image_looks_like_nginx_to_the_pid_namespace_specs(ctrpyd: Daemon, served: ServedImages) -> None:
    """Run through the stock ctr: the server listens on :80, ``pidof nginx`` finds the pid in
    /var/run/nginx.pid, PID 1's command line says "master process", and SIGTERM stops it."""
    name = "registry.k8s.io/e2e-test-images/nginx:1.14-2"
    result = _ctrpy(ctrpyd, "images", "pull", "--hosts-dir", str(served.hosts_dir), name)
    assert result.returncode == 0, result.stderr
    started = ctrpyd.ctr("run", "-d", name, "critest-nginx", namespace=NAMESPACE)
    assert started.returncode == 0, started.stderr
    try:
        def exec_(*argv: str) -> str:
            out = ctrpyd.ctr("tasks", "exec", "--exec-id", f"e{secrets.token_hex(3)}", "critest-nginx", *argv,
                             namespace=NAMESPACE)
            return out.stdout if out.returncode == 0 else ""

        pid = wait_until(lambda: exec_("cat", "/var/run/nginx.pid").strip(), "nginx.pid", timeout=60)
        assert pid in exec_("pidof", "nginx").split()
        assert "master process" in exec_("cat", "/proc/1/cmdline")
        wait_until(lambda: ":80 " in exec_("netstat", "-ln"), "a listener on :80", timeout=60)
        assert ctrpyd.ctr("tasks", "kill", "critest-nginx", namespace=NAMESPACE).returncode == 0
        wait_until(lambda: "STOPPED" in ctrpyd.ctr("tasks", "ls", namespace=NAMESPACE).stdout,
                   "nginx to stop on SIGTERM", timeout=60)
    finally:
        ctrpyd.ctr("tasks", "rm", "-f", "critest-nginx", namespace=NAMESPACE)
        ctrpyd.ctr("containers", "rm", "critest-nginx", namespace=NAMESPACE)
