"""Fixtures for the content store tests: a fresh store in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrpy.manager.content import ContentStore


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    # No waiting for busy refs: the lock tests say when they want to wait.
    return ContentStore(tmp_path / "root", lock_timeout=0)
