"""Keep ``ssl`` (and OpenSSL's libssl) out of ctrpyd until something needs TLS.

asyncio imports ``ssl`` when it is imported (``base_events``, ``selector_events``, ``sslproto``)
to offer TLS transports. ctrpyd serves on unix sockets; only the registry client speaks TLS, and
it (httpx over anyio) imports ``ssl`` itself when it is built. The module, its enums and libssl
cost an idle daemon about 1.1 MiB of resident memory (measured on fresh daemons).

:func:`import_asyncio` imports asyncio while ``ssl`` is hidden, so asyncio's modules start with
``ssl = None``, and puts a finder on ``sys.meta_path`` that waits for the first real
``import ssl`` (by anyone): once that module has run, it is handed to asyncio's modules, as if
asyncio had imported it itself, and the finder removes itself. From then on asyncio's own TLS
(``loop.create_connection(ssl=...)``, ``start_tls``) works exactly as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# The asyncio modules that bind ``ssl`` at import (CPython 3.11-3.13).
_ASYNCIO_MODULES = ("asyncio.base_events", "asyncio.selector_events", "asyncio.sslproto")


def import_asyncio() -> None:
    """Import asyncio without ``ssl``; a no-op when either is already imported."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` raise ImportError
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]
    sys.meta_path.insert(0, _SslFinder())


def _give_asyncio(ssl: ModuleType) -> None:
    """What asyncio's modules would have bound had ``ssl`` been importable when they were."""
    for name in _ASYNCIO_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "ssl", None) is None:
            module.ssl = ssl  # type: ignore[attr-defined]
    sslproto = sys.modules.get("asyncio.sslproto")
    if sslproto is not None and not hasattr(sslproto, "SSLAgainErrors"):
        sslproto.SSLAgainErrors = (ssl.SSLWantReadError, ssl.SSLSyscallError)  # type: ignore[attr-defined]


class _SslFinder(importlib.abc.MetaPathFinder):
    """Finds ``ssl`` the usual way (it steps aside first), once, and wraps its loader to call
    :func:`_give_asyncio`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "ssl":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # by the finders that would have found it
        if spec is not None and spec.loader is not None:
            spec.loader = _HandingLoader(spec.loader)
        return spec


class _HandingLoader(importlib.abc.Loader):
    """``ssl``'s own loader, plus the hand-over to asyncio once the module has run."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _give_asyncio(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code...: the inner loader's
        return getattr(self._inner, name)
