"""buf lint, buf build and buf format over proto/, with the repository's buf.yaml.

The buf binary is taken from $CTRPY_BUF, or else from .tools/node_modules/.bin/buf
(installed by `npm install --prefix .tools @bufbuild/buf@1.75.0`, as CI does).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "npm install --prefix .tools @bufbuild/buf@1.75.0"


@pytest.fixture(scope="module")
def buf() -> Path:
    configured = os.environ.get("CTRPY_BUF")
    path = (
        Path(configured)
        if configured
        else REPO / ".tools" / "node_modules" / ".bin" / "buf"
    )
    if not path.exists():
        pytest.fail(
            f"buf not found at {path}; install it with `{INSTALL_HINT}` from the repository "
            "root, or point $CTRPY_BUF at a buf binary"
        )
    return path


def run_buf(
    buf: Path, *args: str, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_buf_lint_passes(buf: Path) -> None:
    result = run_buf(buf, "lint")
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"


def test_buf_build_passes(buf: Path, tmp_path: Path) -> None:
    image = tmp_path / "image.binpb"
    result = run_buf(buf, "build", "-o", str(image))
    assert result.returncode == 0, f"buf build failed:\n{result.stdout}{result.stderr}"
    assert image.stat().st_size > 0


def test_protos_are_buf_formatted(buf: Path) -> None:
    result = run_buf(buf, "format", "--diff", "--exit-code")
    assert result.returncode == 0, (
        f"run `buf format -w`:\n{result.stdout}{result.stderr}"
    )


def test_ctrpy_packages_get_no_lint_exceptions(buf: Path, tmp_path: Path) -> None:
    """The compatibility exceptions must not leak onto the project's own API."""
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    own = tmp_path / "proto" / "ctrpy" / "probe" / "v1"
    own.mkdir(parents=True)
    # Breaks SERVICE_SUFFIX, RPC_REQUEST_STANDARD_NAME and ENUM_ZERO_VALUE_SUFFIX,
    # all of which are waived for the containerd tree.
    (own / "probe.proto").write_text(
        'syntax = "proto3";\n'
        "package ctrpy.probe.v1;\n"
        "enum Colour {\n  COLOUR_UNKNOWN = 0;\n}\n"
        "message Echo {}\n"
        "message PingResponse {}\n"
        "service Probe {\n  rpc Ping(Echo) returns (PingResponse);\n}\n"
    )
    result = run_buf(buf, "lint", "--error-format=json", cwd=tmp_path)
    assert result.returncode != 0
    findings = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert {f["path"] for f in findings} == {"proto/ctrpy/probe/v1/probe.proto"}
    assert {f["type"] for f in findings} >= {
        "SERVICE_SUFFIX",
        "RPC_REQUEST_STANDARD_NAME",
        "ENUM_ZERO_VALUE_SUFFIX",
    }
