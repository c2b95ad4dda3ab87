"""JSON bytes exactly as Go's ``encoding/json`` writes them.

Digests of documents that an importer writes itself (the manifest and index made for a Docker
archive, the ``index.json`` of an export) depend on every byte, so ctrpy spells them as
containerd does: no spaces, struct fields in declaration order (callers build dicts in that
order), map keys sorted, non-ASCII characters kept, and ``<``, ``>``, ``&``, U+2028 and U+2029
escaped.
"""

from __future__ import annotations

import json
from typing import Any

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _go_string(text: str) -> str:
    out: list[str] = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _encode(value: Any, sort_keys: bool, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(json.dumps(value))
    elif isinstance(value, GoMap):
        _encode_object(sorted(value.items()), out)
    elif isinstance(value, dict):
        _encode_object(sorted(value.items()) if sort_keys else list(value.items()), out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, sort_keys, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode_object(items: list[tuple[Any, Any]], out: list[str]) -> None:
    out.append("{")
    for i, (key, item) in enumerate(items):
        if i:
            out.append(",")
        out.append(_go_string(str(key)))
        out.append(":")
        _encode(item, False, out)
    out.append("}")


class GoMap(dict[str, Any]):
    """A dict that encodes like a Go map: keys sorted (plain dicts keep their order, as structs)."""


def dumps(value: Any) -> bytes:
    """Encode ``value`` the way Go's ``json.Marshal`` would encode the equivalent structs.

    Plain dicts keep their insertion order (they stand for structs); :class:`GoMap` values are
    written with sorted keys. Raises TypeError for values JSON cannot hold.
    """
    out: list[str] = []
    _encode(value, False, out)
    return "".join(out).encode()
