"""The ``[cri]`` section of ctrpyd's configuration: defaults, overrides, clear errors."""

from __future__ import annotations

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager import config


def test_defaults_are_containerds_and_read_back() -> None:
    cri = config.Config().cri
    assert cri.enabled
    assert cri.sandbox_image == "registry.k8s.io/pause:3.10"
    assert cri.cni_conf_dir == "/etc/cni/net.d"
    assert cri.cni_bin_dirs == ("/opt/cni/bin", "/usr/lib/cni")
    assert (cri.cgroup_driver, cri.stream_server_address, cri.stream_server_port) == ("cgroupfs", "127.0.0.1", "0")
    assert (cri.max_container_log_line_size, cri.image_pull_progress_timeout, cri.stats_collect_period) == (
        16384, "5m", 10)
    assert config.parse(config.render(config.Config())) == config.Config()


def test_overrides_and_the_registry_fallback() -> None:
    parsed = config.parse(
        '[transfer]\nconfig_path = "/etc/ctrpy/certs.d"\n'
        '[cri]\nenabled = false\nsandbox_image = "127.0.0.1:5000/pause:1"\ncni_bin_dirs = ["/x", "/y"]\n'
        'image_pull_progress_timeout = "1h30m"\nmax_container_log_line_size = 100\n'
    )
    assert not parsed.cri.enabled and parsed.cri.cni_bin_dirs == ("/x", "/y")
    assert parsed.cri.sandbox_image == "127.0.0.1:5000/pause:1"
    assert config.duration_seconds(parsed.cri.image_pull_progress_timeout) == 5400
    assert parsed.cri_registry_config_path == "/etc/ctrpy/certs.d"  # [transfer]'s, as none is given
    own = config.parse('[transfer]\nconfig_path = "/a"\n[cri]\nregistry_config_path = "/b"\n')
    assert own.cri_registry_config_path == "/b"
    assert config.parse(config.render(parsed)) == parsed


@pytest.mark.parametrize(
    "text, message",
    [
        ("[cri]\nenable = true", r"unknown keys in \[cri\]"),
        ("[cri]\nenabled = 'yes'", "cri.enabled must be a bool"),
        ("[cri]\ncgroup_driver = 'systemd'", "not supported"),
        ("[cri]\ncni_bin_dirs = '/opt/cni/bin'", "cri.cni_bin_dirs must be a list"),
        ("[cri]\ncni_bin_dirs = [1]", "list of directories"),
        ("[cri]\nstream_server_port = '-1'", "is not a port"),
        ("[cri]\nimage_pull_progress_timeout = '5 minutes'", "is not a duration"),
        ("[cri]\nmax_container_log_line_size = -1", "must not be negative"),
        ("[cri]\nsandbox_image = ''", "must name an image"),
        ("cri = 1", "cri must be a dict"),
    ],
)
def test_bad_cri_config_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        config.parse(text)
