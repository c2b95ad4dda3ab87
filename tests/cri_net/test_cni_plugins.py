"""CNI ADD/CHECK/DEL with Debian's real plugins (bridge, host-local, loopback, portmap) into
pinned network namespaces; each test on a bridge and subnet of its own (see conftest)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ctrpy.errors import DeadlineExceeded, NotFound
from ctrpy.manager.cri import netns
from ctrpy.manager.cri.cni import CNI, LOOPBACK_NETWORK, PluginError, PodRequest, PortMapping
from ctrpy.manager.cri.cniconfig import load_first
from tests.cri_net.conftest import Net, connect, plugin_dir, requires_plugins

pytestmark = requires_plugins


def _pod(path: str, sandbox: str = "sb0123456789abcdef", **kwargs: Any) -> PodRequest:
    return PodRequest(sandbox, path, pod_namespace="default", pod_name="web", pod_uid="uid-1", **kwargs)


def _addresses(path: str) -> dict[str, list[str]]:
    """Interface name -> IPv4 addresses (CIDR) inside the namespace, and which are up."""
    out = subprocess.run(
        ["nsenter", f"--net={path}", "ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True
    ).stdout
    found: dict[str, list[str]] = {}
    for link in json.loads(out):
        state = "UP" if "UP" in link.get("flags", []) else "DOWN"
        found[link["ifname"]] = [state] + [
            f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
        ]
    return found


def _iptables_usable() -> bool:
    try:
        return (
            subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, timeout=30).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_add_attaches_the_pod_and_its_ip_answers_from_the_host(testnet: Net, listen: Any) -> None:
    testnet.write_conflist(portmap=False)
    cni = testnet.cni()
    path = testnet.new_netns()
    pod = _pod(path)

    network = asyncio.run(cni.setup(pod))

    [ip] = network.ips()
    assert ipaddress.ip_address(ip.ip) in testnet.subnet and ip.interface == "eth0"
    assert ip.gateway == str(testnet.subnet.network_address + 1)
    assert [a.network for a in network.attachments] == [LOOPBACK_NETWORK, testnet.name]
    assert testnet.allocated() == [ip.ip]
    inside = _addresses(path)
    assert inside["lo"] == ["UP", "127.0.0.1/8"]  # the loopback network brought it up
    assert inside["eth0"] == ["UP", ip.address]
    assert sorted(os.listdir(testnet.cache_dir / "results")) == sorted(
        [f"{LOOPBACK_NETWORK}-{pod.container_id}-lo", f"{testnet.name}-{pod.container_id}-eth0"]
    )
    cached = cni.pod_network(pod.container_id)
    assert cached is not None and cached.ips() == network.ips()
    assert [a.result for a in cached.attachments] == [a.result for a in network.attachments]

    listen(path, 8080)
    assert connect(ip.ip, 8080) == b"pong"

    asyncio.run(cni.teardown(pod))
    assert testnet.allocated() == []
    assert os.listdir(testnet.cache_dir / "results") == []
    assert "eth0" not in _addresses(path)  # the bridge plugin removed its veth
    asyncio.run(cni.teardown(pod))  # idempotent


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_add_check_del_in_each_spec_version(testnet: Net, version: str) -> None:
    testnet.write_conflist(version, portmap=False)
    cni = testnet.cni()
    pod = _pod(testnet.new_netns())

    network = asyncio.run(cni.setup(pod))
    [ip] = network.ips()
    assert testnet.allocated() == [ip.ip]
    main = network.attachments[-1]
    assert main.result is not None and main.result.cni_version == version
    asyncio.run(cni.check(pod))  # 0.3.1 has no CHECK: skipped; the others pass

    asyncio.run(cni.teardown(pod))
    assert testnet.allocated() == []
    with pytest.raises(NotFound):
        asyncio.run(cni.check(pod))


def test_a_host_port_reaches_the_server_in_the_pod(testnet: Net, listen: Any) -> None:
    if not _iptables_usable():
        pytest.skip("iptables (nat table) is not usable here; portmap needs it")
    testnet.write_conflist()
    cni = testnet.cni()
    path = testnet.new_netns()
    host_port = _free_port()
    pod = _pod(path, port_mappings=(PortMapping(host_port, 8080, "TCP", "127.0.0.1"),))

    asyncio.run(cni.setup(pod))
    assert any(f"--dports {host_port}" in rule for rule in testnet.nat_rules())
    listen(path, 8080)
    assert connect("127.0.0.1", host_port) == b"pong"

    asyncio.run(cni.teardown(pod))
    assert testnet.nat_rules() == []  # portmap's DEL removed its chain and rules
    assert testnet.allocated() == []


def test_del_releases_the_ip_when_the_netns_is_already_gone(testnet: Net) -> None:
    testnet.write_conflist()
    cni = testnet.cni()
    path = testnet.new_netns()
    pod = _pod(path)
    asyncio.run(cni.setup(pod))
    assert len(testnet.allocated()) == 1

    netns.remove(path)  # as after a reboot or a lost pin
    asyncio.run(cni.teardown(pod))  # runs with CNI_NETNS="" and still frees the address
    assert testnet.allocated() == []
    assert cni.pod_network(pod.container_id) is None


def test_the_cached_result_serves_status_and_del_after_a_restart(testnet: Net) -> None:
    conf = testnet.write_conflist()
    path = testnet.new_netns()
    pod = _pod(path)
    before = asyncio.run(testnet.cni().setup(pod))

    # "Restart": a new runtime object, and meanwhile the config file was removed.
    conf.unlink()
    after = testnet.cni()
    assert not after.readiness().ready
    cached = after.pod_network(pod.container_id)
    assert cached is not None and cached.ips() == before.ips()
    assert after.cached_sandboxes() == {pod.container_id}

    asyncio.run(after.teardown(PodRequest(pod.container_id, path)))  # DEL with the cached config
    assert testnet.allocated() == []
    assert after.cached_sandboxes() == set()


def test_two_pods_get_distinct_addresses_and_release_only_their_own(testnet: Net) -> None:
    testnet.write_conflist(portmap=False)
    cni = testnet.cni()
    a, b = _pod(testnet.new_netns(), "pod-a"), _pod(testnet.new_netns(), "pod-b")

    async def both() -> list[str]:
        nets = await asyncio.gather(cni.setup(a), cni.setup(b))
        return [n.ips()[0].ip for n in nets]

    ips = asyncio.run(both())
    assert len(set(ips)) == 2 and testnet.allocated() == sorted(ips)
    asyncio.run(cni.teardown(a))
    assert testnet.allocated() == [ips[1]]
    assert cni.cached_sandboxes() == {"pod-b"}
    asyncio.run(cni.teardown(b))
    assert testnet.allocated() == []


def test_a_plugin_error_is_reported_with_the_plugins_message(testnet: Net) -> None:
    testnet.write_conflist(
        portmap=False,
        ipam={"type": "host-local", "ranges": [[{"subnet": "nope"}]], "dataDir": str(testnet.ipam_dir)},
    )
    cni = testnet.cni()
    pod = _pod(testnet.new_netns())
    with pytest.raises(PluginError) as caught:
        asyncio.run(cni.setup(pod))
    error = caught.value
    assert (error.plugin, error.network, error.command) == ("bridge", testnet.name, "ADD")
    assert error.cni_code != 0 and "invalid CIDR address" in error.msg
    assert error.message.startswith(f'plugin type="bridge" name="{testnet.name}" failed (add): invalid CIDR')
    assert testnet.allocated() == []
    # Its DEL fails on the same config, so the entry stays (result-less) for a retry or doctor.
    [pending] = [a for a in cni.attachments(pod.container_id) if a.network == testnet.name]
    assert pending.result is None


def test_a_missing_plugin_fails_add_and_the_undo_still_frees_the_address(testnet: Net) -> None:
    testnet.write_conflist(portmap=False, extra=[{"type": "ctrpy-no-such-plugin"}])
    cni = testnet.cni()
    pod = _pod(testnet.new_netns())
    with pytest.raises(PluginError, match='failed to find plugin "ctrpy-no-such-plugin"'):
        asyncio.run(cni.setup(pod))
    # The bridge's ADD had allocated an address; the undo's DEL reached it despite the
    # missing plugin before it in the reversed chain.
    assert testnet.allocated() == []


def test_a_hung_plugin_is_killed_with_its_children_at_the_timeout(testnet: Net, tmp_path: Path) -> None:
    # Fault injection: a plugin that hangs on ADD (with a child holding its pipes) and
    # succeeds silently on DEL.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pid_file = tmp_path / "child.pid"
    hang = bin_dir / "ctrpy-hang"
    hang.write_text(
        '#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then sleep 300 & echo $! >' + str(pid_file) + "; wait; fi\n"
    )
    hang.chmod(0o755)
    (testnet.conf_dir / "10-hang.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": testnet.name, "plugins": [{"type": "ctrpy-hang"}]})
    )
    directory = plugin_dir()
    assert directory is not None
    cni = CNI(
        testnet.cache_dir, conf_dir=str(testnet.conf_dir), bin_dirs=[str(bin_dir), directory], timeout=1.0
    )
    pod = _pod(testnet.new_netns())

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match='type="ctrpy-hang"'):
        asyncio.run(cni.setup(pod))
    assert time.monotonic() - started < 30  # liveness bound, generous
    child = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{child}") or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert cni.attachments(pod.container_id) == []  # the undo's DEL succeeded


def test_the_shipped_default_conflist_works_with_the_debian_plugins(testnet: Net, listen: Any) -> None:
    """contrib/cni/10-ctrpy.conflist as installed, but on this test's bridge, subnet and IPAM
    directory (the real ctrpy0 and 10.88.0.0/16 may be in use on this host)."""
    if not _iptables_usable():
        pytest.skip("iptables (nat table) is not usable here; portmap and ipMasq need it")
    shipped = Path(__file__).resolve().parents[2] / "contrib" / "cni" / "10-ctrpy.conflist"
    net = load_first(str(shipped.parent))
    assert net.types == ("bridge", "portmap") and net.plugins[0]["bridge"] == "ctrpy0"
    document = json.loads(shipped.read_text())
    document["name"] = testnet.name
    bridge = document["plugins"][0]
    bridge["bridge"] = testnet.bridge
    bridge["ipam"]["ranges"] = [[{"subnet": str(testnet.subnet)}]]
    bridge["ipam"]["dataDir"] = str(testnet.ipam_dir)
    (testnet.conf_dir / shipped.name).write_text(json.dumps(document))
    cni = testnet.cni()
    path = testnet.new_netns()
    host_port = _free_port()
    pod = _pod(path, port_mappings=(PortMapping(host_port, 8080, "tcp", "127.0.0.1"),))

    [ip] = asyncio.run(cni.setup(pod)).ips()
    assert any("MASQUERADE" in rule for rule in testnet.nat_rules())  # ipMasq's per-pod chain
    listen(path, 8080)
    assert connect(ip.ip, 8080) == b"pong"
    assert connect("127.0.0.1", host_port) == b"pong"

    asyncio.run(cni.teardown(pod))
    assert testnet.nat_rules() == [] and testnet.allocated() == []
