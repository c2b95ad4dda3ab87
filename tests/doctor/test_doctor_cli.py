"""The ``ctrpy doctor`` command line: options, configuration, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ctrpy.manager import rootlock as lock

from .conftest import Daemon
from .helpers import doctor


def _ctrpy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctrpy.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert _ctrpy("doctor", "--no-such-option").returncode == 2
    assert _ctrpy("doctor", "--root", str(tmp_path), "--stale-after", "0").returncode == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("root = 3\n")
    result = _ctrpy("doctor", "--config", str(bad))
    assert result.returncode == 2 and "root must be a str" in result.stderr
    missing = _ctrpy("doctor", "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "absent.toml" in missing.stderr


def test_directories_come_from_the_config_file_and_flags_win(tmp_path: Path) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    (root / "snapshots" / "native" / "snapshots").mkdir(parents=True)
    config = tmp_path / "ctrpyd.toml"
    config.write_text(f'version = 1\nroot = "{root}"\nstate = "{state}"\n')
    result = _ctrpy("doctor", "--config", str(config), "--format", "json")
    report = json.loads(result.stdout)
    assert (report["root"], report["state"], report["ok"]) == (str(root), str(state), True)
    assert result.returncode == 0
    other = tmp_path / "other"
    result = _ctrpy("--format", "json", "doctor", "--config", str(config), "--root", str(other))
    assert json.loads(result.stdout)["root"] == str(other)
    assert not other.exists()  # looking creates nothing


def test_a_daemon_holds_the_lock(daemon: Daemon) -> None:
    assert lock.daemon_running(daemon.root)
    result = doctor(daemon, "--fix", "--format", "json")
    assert result.returncode == 2 and result.stdout == ""
    daemon.stop()
    assert not lock.daemon_running(daemon.root)
    with lock.holding_root(daemon.root):
        # A second doctor (or a ctrpyd) cannot take the root meanwhile.
        refused = doctor(daemon, "--fix")
        assert refused.returncode == 2 and "ctrpyd.lock" in refused.stderr
    assert doctor(daemon, "--fix").returncode == 0
