"""CNI configuration loading, readiness, plugin stdin and result parsing (no plugin runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager.cri.cni import CNI, DnsConfig, PodRequest, PortMapping
from ctrpy.manager.cri.cniconfig import load_first, parse_conflist, parse_result

BRIDGE = {"type": "bridge", "bridge": "x0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}


def _write(directory: Path, name: str, document: object) -> Path:
    path = directory / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_the_first_file_in_lexical_order_wins(tmp_path: Path) -> None:
    _write(tmp_path, "20-second.conflist", {"cniVersion": "1.0.0", "name": "second", "plugins": [BRIDGE]})
    _write(tmp_path, "10-first.conflist", {"cniVersion": "0.4.0", "name": "first", "plugins": [BRIDGE]})
    _write(tmp_path, "05-ignored.txt", "not a config")
    (tmp_path / "01-dir.conf").mkdir()
    net = load_first(str(tmp_path))
    assert (net.name, net.cni_version, net.types) == ("first", "0.4.0", ("bridge",))
    assert net.source.endswith("10-first.conflist")


def test_a_single_plugin_conf_is_wrapped_into_a_list(tmp_path: Path) -> None:
    _write(tmp_path, "10-single.conf", {"cniVersion": "0.3.1", "name": "single", **BRIDGE})
    net = load_first(str(tmp_path))
    assert net.name == "single" and net.cni_version == "0.3.1"
    assert net.plugins == ({**BRIDGE},)


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("10-bad.conflist", "{not json", "failed to load"),
        ("10-bad.conflist", {"cniVersion": "9.9.9", "name": "n", "plugins": [BRIDGE]}, "not supported"),
        ("10-bad.conflist", {"cniVersion": "1.0.0", "name": "n", "plugins": []}, "no plugins"),
        ("10-bad.conflist", {"cniVersion": "1.0.0", "name": "../n", "plugins": [BRIDGE]}, "network name"),
        ("10-bad.conflist", {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../sh"}]}, "type"),
        ("10-bad.conf", {"cniVersion": "1.0.0", "name": "n", "plugins": [BRIDGE]}, ".conflist"),
        ("10-bad.json", {"cniVersion": "1.0.0", "name": "n"}, "type not found"),
    ],
)
def test_an_invalid_first_file_makes_the_network_not_ready(
    tmp_path: Path, name: str, content: object, why: str
) -> None:
    _write(tmp_path, name, content)
    _write(tmp_path, "99-valid.conflist", {"cniVersion": "1.0.0", "name": "ok", "plugins": [BRIDGE]})
    with pytest.raises(InvalidArgument, match=why):
        load_first(str(tmp_path))
    status = CNI(tmp_path / "cache", conf_dir=str(tmp_path)).readiness()
    assert not status.ready and status.reason == "NetworkPluginNotReady" and why in status.message


def test_readiness_follows_the_conf_dir(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    cni = CNI(tmp_path / "cache", conf_dir=str(conf))
    status = cni.readiness()
    assert not status.ready and "no network config found" in status.message
    conf.mkdir()
    _write(conf, "10-n.conflist", {"cniVersion": "1.0.0", "name": "n", "plugins": [BRIDGE]})
    assert cni.readiness().ready


def test_cni_args_and_capabilities_as_the_cri_sets_them() -> None:
    pod = PodRequest(
        "sb1",
        "/ns",
        pod_namespace="default",
        pod_name="web",
        pod_uid="u-1",
        port_mappings=(PortMapping(8080, 80, "TCP", "127.0.0.1"), PortMapping(0, 81)),
        dns=DnsConfig(("10.0.0.10",), ("svc.local",), ("ndots:5",)),
    )
    assert pod.cni_args() == [
        ("IgnoreUnknown", "1"),
        ("K8S_POD_NAMESPACE", "default"),
        ("K8S_POD_NAME", "web"),
        ("K8S_POD_INFRA_CONTAINER_ID", "sb1"),
        ("K8S_POD_UID", "u-1"),
    ]
    caps = pod.capability_args()
    # A port without a host port is not published.
    assert caps["portMappings"] == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}
    ]
    assert caps["dns"] == {"servers": ["10.0.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]}


def test_each_plugin_gets_only_the_capabilities_it_asks_for() -> None:
    net = parse_conflist(
        {
            "cniVersion": "1.0.0",
            "name": "n",
            "plugins": [BRIDGE, {"type": "portmap", "capabilities": {"portMappings": True, "dns": False}}],
        }
    )
    caps = {"portMappings": [{"hostPort": 1}], "dns": {"servers": []}}
    prev = {"cniVersion": "1.0.0", "ips": []}
    bridge = json.loads(CNI._plugin_conf(net, net.plugins[0], None, caps))
    portmap = json.loads(CNI._plugin_conf(net, net.plugins[1], prev, caps))
    assert bridge["name"] == "n" and bridge["cniVersion"] == "1.0.0"
    assert "runtimeConfig" not in bridge and "prevResult" not in bridge
    assert portmap["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert portmap["prevResult"] == prev


def test_results_of_each_version_parse_alike() -> None:
    v1 = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "br0", "mac": "aa"}, {"name": "eth0", "mac": "bb", "sandbox": "/ns"}],
        "ips": [
            {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
            {"address": "fd00::5/64", "interface": 1},
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["1.1.1.1"], "search": ["a"]},
    }
    old = json.loads(json.dumps(v1))
    old["cniVersion"] = "0.3.1"
    for ip in old["ips"]:
        ip["version"] = "6" if ":" in ip["address"] else "4"
    for document in (v1, old):
        result = parse_result(document, "eth0")
        assert [ip.ip for ip in result.ips_of("eth0")] == ["10.1.0.5", "fd00::5"]
        assert result.ips[0].gateway == "10.1.0.1" and result.ips[1].family == 6
        assert result.interfaces[1].sandbox == "/ns"
        assert result.routes[0].dst == "0.0.0.0/0" and result.dns.nameservers == ("1.1.1.1",)
    # An IP without an interface index belongs to the interface the runtime asked for.
    assert (
        parse_result({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.9/24"}]}, "lo").ips[0].interface
        == "lo"
    )
    with pytest.raises(InvalidArgument):
        parse_result({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24"}})
    with pytest.raises(InvalidArgument):
        parse_result({"cniVersion": "1.0.0", "ips": [{"address": "not-an-ip"}]})
