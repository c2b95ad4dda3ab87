"""Fixtures for the shim tests: a busybox rootfs, runc's default spec, short state dirs."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.shim.harness import Env, base_spec, build_rootfs


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test function in a fresh event loop (pytest sees the same signature)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    wrapper.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return wrapper


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rootfs(tmp_path_factory.mktemp("rootfs"))


@pytest.fixture(scope="session")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return base_spec(tmp_path_factory.mktemp("spec"))


@pytest.fixture
def make_env(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, rootfs: Path, spec: dict[str, Any]
) -> Callable[..., Env]:
    """Build an :class:`Env` (use it as ``async with make_env() as env``).

    The state dir comes from tmp_path_factory (``.../st0``) because shim socket paths must
    stay under 108 bytes; FIFOs live in the test's tmp_path.
    """

    def make(**options: Any) -> Env:
        return Env(tmp_path_factory.mktemp("st"), tmp_path, rootfs, spec, **options)

    return make
