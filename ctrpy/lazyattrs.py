"""A package's names imported at first use (PEP 562's module ``__getattr__``): a caller that
needs one part of a package does not load the others' imports (see ``ctrpy.oci`` and
``ctrpy.manager.diff``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: the name's module (``where[name]``, absolute)
    is imported at the first lookup, and the value kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
