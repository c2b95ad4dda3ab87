"""The socket is root's: mode 0660, owned by root:root, and a real unprivileged user cannot
connect to it, with the stock ctr or with ctrpy. The directories around it are opened up for
the test, so that only the socket's own permissions stand in the way."""

from __future__ import annotations

import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.hostile import probes
from tests.hostile.conftest import configured_daemon
from tests.support.ctrpyd import CTR, Daemon


@pytest.fixture
def stranger() -> Iterator[str]:
    """A throwaway system user with no home, removed afterwards whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    name = f"ctrpytest-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


@pytest.fixture
def exposed_daemon() -> Iterator[Daemon]:
    """A ctrpyd with the default socket permissions, its directory traversable by anyone."""
    daemon = configured_daemon()
    try:
        daemon.start()
        os.chmod(daemon.base, 0o755)
        yield daemon
    finally:
        probes.kill_leftovers(daemon)
        daemon.cleanup()


def test_socket_is_root_only(exposed_daemon: Daemon) -> None:
    st = os.stat(exposed_daemon.address)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_stock_ctr_as_another_user_is_refused(exposed_daemon: Daemon, stranger: str) -> None:
    result = probes.run_as(stranger, CTR, "--address", str(exposed_daemon.address), "--connect-timeout", "3s",
                           "version")
    assert result.returncode != 0
    assert "permission denied" in result.stderr, result.stderr
    assert "Server:" not in result.stdout
    # The same command as root works: the refusal was the socket's permissions.
    assert exposed_daemon.ctr("version").returncode == 0


def test_ctrpy_as_another_user_is_refused(exposed_daemon: Daemon, stranger: str) -> None:
    # ctrpy imports from this checkout: let the stranger read it, as a user of an installed
    # ctrpy could. (The command fails on the socket, not on the import: checked below.)
    result = probes.run_as(stranger, sys.executable, "-m", "ctrpy.cli.main", "--address",
                           str(exposed_daemon.address), "--timeout", "5", "version")
    assert result.returncode != 0
    assert "ModuleNotFoundError" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "permission denied" in result.stderr.lower(), result.stderr
    probes.assert_serving(exposed_daemon)
