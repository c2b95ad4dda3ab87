"""hosts.toml resolution: which endpoints serve a registry host, in which order, with what."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager.registry.hosts import Capability, Endpoint, endpoints, is_loopback


def write(root: Path, host_dir: str, text: str) -> Path:
    directory = root / host_dir
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(text)
    return directory


def test_defaults_without_configuration() -> None:
    assert endpoints("docker.io") == [Endpoint("https", "registry-1.docker.io")]
    assert endpoints("quay.io") == [Endpoint("https", "quay.io")]
    assert endpoints("quay.io")[0].url("a/b", "manifests", "v1") == "https://quay.io/v2/a/b/manifests/v1"


def test_plain_http_only_for_loopback_hosts() -> None:
    assert endpoints("127.0.0.1:5000", plain_http=True)[0].scheme == "http"
    assert endpoints("localhost:5000", plain_http=True)[0].scheme == "http"
    assert endpoints("[::1]:5000", plain_http=True)[0].scheme == "http"
    assert endpoints("127.0.0.1:5000")[0].scheme == "https"
    assert endpoints("quay.io", plain_http=True)[0].scheme == "https"
    assert endpoints("docker.io", plain_http=True)[0].scheme == "https"


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("localhost:5000", True), ("127.0.0.1", True), ("127.1.2.3:80", True),
    ("[::1]:5000", True), ("10.0.0.1:5000", False), ("example.com", False), ("localhost.example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_mirrors_first_in_file_order_then_server(tmp_path: Path) -> None:
    directory = write(tmp_path, "registry.k8s.io", '''
server = "https://registry.k8s.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example/prefix"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.crt"
  client = [["client.cert", "client.key"], "both.pem"]
  header = { x-token = "abc", x-multi = ["1", "2"] }

[host."https://flat.example/api"]
  override_path = true
''')
    found = endpoints("registry.k8s.io", tmp_path)
    assert [e.root for e in found] == [
        "http://127.0.0.1:5000/v2", "https://mirror.example/prefix/v2", "https://flat.example/api",
        "https://registry.k8s.io/v2"]
    assert found[0].capabilities == Capability.PULL | Capability.RESOLVE
    mirror = found[1]
    assert mirror.capabilities == Capability.PULL and not mirror.can(Capability.RESOLVE)
    assert mirror.skip_verify
    assert mirror.ca_files == (str(directory / "ca.crt"),)
    assert mirror.client_pairs == ((str(directory / "client.cert"), str(directory / "client.key")),
                                   (str(directory / "both.pem"), ""))
    assert dict(mirror.headers) == {"x-token": ("abc",), "x-multi": ("1", "2")}
    assert found[3].capabilities == Capability.ALL


def test_server_defaults_to_the_host(tmp_path: Path) -> None:
    write(tmp_path, "docker.io", '[host."http://127.0.0.1:5000"]\ncapabilities = ["pull", "resolve"]\n')
    found = endpoints("docker.io", tmp_path)
    assert [e.root for e in found] == ["http://127.0.0.1:5000/v2", "https://registry-1.docker.io/v2"]


def test_port_directory_spelling_and_default_fallback(tmp_path: Path) -> None:
    write(tmp_path, "_default", 'server = "https://fallback.example"\n')
    write(tmp_path, "myreg:5000", 'server = "https://colon.example"\n')
    assert endpoints("myreg:5000", tmp_path)[0].host == "colon.example"
    write(tmp_path, "myreg_5000_", 'server = "https://underscore.example"\n')
    assert endpoints("myreg:5000", tmp_path)[0].host == "underscore.example"
    assert endpoints("other.example", tmp_path)[0].host == "fallback.example"


def test_plain_http_server_and_top_level_settings(tmp_path: Path) -> None:
    write(tmp_path, "10.0.0.1:5000", 'server = "http://10.0.0.1:5000"\ncapabilities = ["pull"]\nskip_verify = true\n')
    [found] = endpoints("10.0.0.1:5000", tmp_path)
    assert (found.scheme, found.capabilities, found.skip_verify) == ("http", Capability.PULL, True)


def test_docker_certificate_files(tmp_path: Path) -> None:
    directory = tmp_path / "secure.example"
    directory.mkdir()
    for name in ("ca.crt", "client.cert", "client.key"):
        (directory / name).write_text("")
    [found] = endpoints("secure.example", tmp_path)
    assert found.root == "https://secure.example/v2"
    assert found.ca_files == (str(directory / "ca.crt"),)
    assert found.client_pairs == ((str(directory / "client.cert"), str(directory / "client.key")),)


def test_empty_directory_means_defaults(tmp_path: Path) -> None:
    (tmp_path / "quay.io").mkdir()
    assert endpoints("quay.io", tmp_path) == [Endpoint("https", "quay.io")]


@pytest.mark.parametrize(("text", "message"), [
    ("server = [", "hosts.toml"),
    ('[host."https://m"]\ncapabilities = ["fly"]\n', "unknown capability 'fly'"),
    ('[host."https://m"]\nskip_verify = "yes"\n', "skip_verify must be a boolean"),
    ('[host."https://m"]\nca = 3\n', "ca must be a string or a list"),
    ('[host."https://m"]\nclient = [["a", "b", "c"]]\n', "[cert, key] pair"),
    ('[host."https://m"]\nheader = { a = 1 }\n', "header 'a'"),
    ('[host."ftp://m"]\n', "unsupported scheme"),
    ("server = 5\n", "server must be a string"),
])
def test_malformed_hosts_toml(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "bad.example", text)
    with pytest.raises(InvalidArgument) as raised:
        endpoints("bad.example", tmp_path)
    assert message in str(raised.value)
    assert "hosts.toml" in str(raised.value)
