"""contrib/ctrpyd.service: the settings the README promises, and ``systemd-analyze verify``."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "contrib" / "ctrpyd.service"


def test_unit_settings() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "process"  # the shims outlive a restart
    assert service["Delegate"] == "yes"
    assert service["Restart"] == "always"
    assert service["LimitNOFILE"] in ("infinity", "1048576")
    assert service["ExecStart"].split()[0].endswith("/ctrpyd")
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package has it)")
    # verify checks that the binaries exist: point ExecStart at this environment's ctrpyd.
    ctrpyd = Path(sys.executable).parent / "ctrpyd"
    assert ctrpyd.exists(), ctrpyd
    text = UNIT.read_text().replace("ExecStart=/usr/local/bin/ctrpyd", f"ExecStart={ctrpyd}")
    copy = tmp_path / "ctrpyd.service"
    copy.write_text(text)
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Warnings about our unit (not about others on the machine) fail the test too.
    assert "ctrpyd.service:" not in result.stderr, result.stderr
