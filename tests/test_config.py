"""ctrpyd's configuration: defaults, the TOML file, flags over both, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager import config


def ctrpyd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ctrpy.manager.main", *args], capture_output=True, text=True, timeout=30)


def test_config_default_prints_the_embedded_defaults_and_reads_back() -> None:
    result = ctrpyd("config", "default")
    assert result.returncode == 0, result.stderr
    assert 'root = "/var/lib/ctrpy"' in result.stdout
    assert 'address = "/run/ctrpy/ctrpy.sock"' in result.stdout
    assert 'mode = "0660"' in result.stdout
    assert config.parse(result.stdout) == config.Config()


def test_file_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "ctrpyd.toml"
    file.write_text(
        'root = "/srv/ctrpy"\n[grpc]\naddress = "/srv/ctrpy.sock"\nmode = "0600"\n'
        '[log]\nlevel = "debug"\n[proxy_plugins.remote]\ntype = "snapshot"\naddress = "/run/snap.sock"\n'
    )
    result = ctrpyd("--config", str(file), "--root", "/elsewhere", "config", "dump")
    assert result.returncode == 0, result.stderr
    dumped = config.parse(result.stdout)
    assert dumped.root == Path("/elsewhere")  # the flag wins over the file
    assert dumped.address == Path("/srv/ctrpy.sock")
    assert dumped.socket_mode == 0o600
    assert dumped.log_level == "debug"
    assert dumped.proxy_plugins["remote"].address == "/run/snap.sock"


@pytest.mark.parametrize(
    "text, message",
    [
        ("rooot = '/x'", "unknown keys"),
        ("[grpc]\nadress = '/x'", r"unknown keys in \[grpc\]"),
        ("root = 'relative'", "must be an absolute path"),
        ("[log]\nlevel = 'loud'", "log level"),
        ("version = 7", "not supported"),
        ("root = ", "config:"),
        ("[grpc]\nuid = 'root'", "must be a int"),
    ],
)
def test_bad_config_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        config.parse(text)


def test_bad_config_file_stops_ctrpyd(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("[grpc]\nadress = '/x'\n")
    result = ctrpyd("--config", str(file))
    assert result.returncode == 1
    assert "unknown keys in [grpc]" in result.stderr
