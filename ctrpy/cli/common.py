"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from ctrpy.errors import InvalidArgument


def parse_labels(pairs: Sequence[str]) -> dict[str, str]:
    """``key=value`` arguments as a dict; ``key`` alone (or ``key=``) means an empty value."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if not key:
            raise InvalidArgument(f"label {pair!r} has no key")
        labels[key] = value
    return labels


def verbs(nouns: argparse._SubParsersAction, name: str, help_text: str, aliases: Sequence[str] = ()):  # type: ignore[type-arg,no-untyped-def]
    """Add a noun and return the sub-parser collection for its verbs."""
    noun = nouns.add_parser(name, help=help_text, aliases=list(aliases))
    return noun.add_subparsers(dest="verb", metavar="VERB", required=True)


def verb(
    group: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help_text: str,
    run: Callable[..., int],
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text, aliases=list(aliases))
    parser.set_defaults(run=run)
    return parser
