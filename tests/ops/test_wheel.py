"""The wheel: ``python -m build`` makes one that installs the four commands into a clean venv,
and ctrpyd and ``ctrpy run`` work from it (the main job, as scripts/demo does it).

Slow (a wheel build in an isolated environment, a venv, the dependencies from the index):
a few minutes at most, every step bounded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.ctrpyd import Daemon

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# What a wheel is not built from: copied without these, the build never writes into the work tree.
IGNORE = shutil.ignore_patterns(".venv", ".git", ".tools", "build", "dist", "*.egg-info", "__pycache__",
                                ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "tests", "bench")
IMAGE = "docker.io/library/busybox:latest"


def run(*argv: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


class WheelDaemon(Daemon):
    """A ctrpyd started by the venv's own ``ctrpyd`` script."""

    def __init__(self, ctrpyd: Path) -> None:
        super().__init__()
        self.ctrpyd = ctrpyd

    def command(self) -> list[str]:
        return [str(self.ctrpyd), *super().command()[3:]]  # the same flags, without `python -m ...`


def test_wheel_installs_the_commands_and_runs_the_main_job(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=IGNORE, symlinks=True)
    run(sys.executable, "-m", "build", "--wheel", "--outdir", tmp_path / "dist", source, timeout=900)
    wheels = list((tmp_path / "dist").glob("ctrpy-*.whl"))
    assert len(wheels) == 1, wheels
    names = zipfile.ZipFile(wheels[0]).namelist()
    for module in ("ctrpy/manager/main.py", "ctrpy/shim/main.py", "ctrpy/snapshotter/main.py",
                   "ctrpy/cli/main.py", "ctrpy/py.typed", "ctrpy/api/containerd/services/tasks/v1/tasks_pb2.py"):
        assert module in names, module
    assert not any(name.startswith(("tests/", "bench/")) for name in names)

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, timeout=300)
    run(venv / "bin" / "pip", "install", "-q", wheels[0], timeout=900)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"ctrpyd", "ctrpy", "ctrpy-shim", "ctrpy-snapshotter"}
    for script in scripts:
        assert (venv / "bin" / script).exists(), script
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert run(venv / "bin" / "ctrpyd", "--version").stdout == f"ctrpyd {version}\n"
    assert "tasks" in run(venv / "bin" / "ctrpy", "--help").stdout

    # The main job from the venv alone: its ctrpyd (whose shims run the venv's Python), an image
    # made by its own ctrpy.testimage, and `ctrpy run`.
    daemon = WheelDaemon(venv / "bin" / "ctrpyd")
    try:
        daemon.start(timeout=60)
        archive = tmp_path / "busybox.tar"
        run(venv / "bin" / "python", "-m", "ctrpy.testimage", "busybox", archive)
        ctrpy = [venv / "bin" / "ctrpy", "--address", daemon.address]
        run(*ctrpy, "images", "import", archive)
        assert run(*ctrpy, "run", "--rm", IMAGE, "from-wheel", "echo", "hello").stdout == "hello\n"
        assert daemon.stop() == 0
    finally:
        daemon.cleanup()
