"""Validation of identifiers that become paths or keys, following containerd's rules.

Namespaces, container ids, exec ids, lease ids and the like are checked once, where they enter
(the servicer edge), so that everything behind can use them as path components safely. The rule
is containerd's ``pkg/identifiers``: 1 to 76 characters; letters and digits, with single ``.``,
``_`` or ``-`` between alphanumeric runs; nothing else (no ``/``, no ``..``, no leading dot).
"""

from __future__ import annotations

import re

from ctrpy.errors import InvalidArgument

MAX_LENGTH = 76
_PATTERN = re.compile(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$")
# The pattern as containerd's message spells it (the same language, one more group).
_SHOWN = r"^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"


def validate(identifier: str) -> str:
    """Return ``identifier`` unchanged when it is valid; raise :class:`InvalidArgument` otherwise."""
    if not identifier:
        raise InvalidArgument("identifier must not be empty")
    if len(identifier) > MAX_LENGTH:
        raise InvalidArgument(
            f'identifier "{identifier}" greater than maximum length ({MAX_LENGTH} characters)'
        )
    if not _PATTERN.fullmatch(identifier):
        raise InvalidArgument(f'identifier "{identifier}" must match {_SHOWN}')
    return identifier
