"""``ctrpy completion bash|zsh``: shell completion scripts generated from the CLI's own parser.

Why generate rather than write by hand: the commands are argparse sub-parsers registered by
each module, and they change often; a script written from the parser tree when it is asked for
never goes stale. Why not the well-kept ``shtab``: it would be a runtime dependency of the CLI
for about 150 lines that only read ``argparse``'s tree, and we want a plain data table in the
script (command path -> sub-commands and options) that bash's and zsh's parts share.

The scripts complete sub-commands (aliases included) at any depth, options of the command
being typed, and the values of options with fixed choices (``--format table|json``). Install::

    ctrpy completion bash > /etc/bash_completion.d/ctrpy
    ctrpy completion zsh > "${fpath[1]}/_ctrpy"     # then: autoload -U compinit && compinit
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field

from ctrpy.client import Client


@dataclass
class Node:
    """One command path: its sub-commands and options, each with its help, and the aliases of
    its sub-commands (accepted on the way, not offered)."""

    subs: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    takes_value: set[str] = field(default_factory=set)
    choices: dict[str, list[str]] = field(default_factory=dict)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    try:
        text = parser._get_formatter()._expand_help(action)
    except (KeyError, TypeError, ValueError):
        text = action.help
    return " ".join(text.split())


def tree(parser: argparse.ArgumentParser) -> dict[str, Node]:
    """Every command path (``""``, ``"tasks"``, ``"tasks ls"``, ...) and what it accepts."""
    nodes: dict[str, Node] = {}

    def visit(current: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        node = Node()
        nodes[" ".join(path)] = node
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                canonical = {id(sub): name for name, sub in action.choices.items() if name in helps}
                for name, sub in action.choices.items():
                    if canonical.get(id(sub), name) == name:
                        node.subs[name] = helps.get(name, "")
                    else:
                        node.aliases.append(name)
                    visit(sub, (*path, name))
            elif not action.option_strings and action.choices:  # a positional with fixed values
                node.subs.update({str(choice): "" for choice in action.choices if str(choice) not in node.subs})
            elif action.option_strings:
                text = _help(current, action)
                for option in action.option_strings:
                    node.options[option] = text
                    if action.nargs != 0:
                        node.takes_value.add(option)
                    if action.choices:
                        node.choices[option] = [str(c) for c in action.choices]

    visit(parser, ())
    return nodes


def _case(nodes: dict[str, Node], key: str, words: dict[str, list[str]]) -> list[str]:
    lines = [f"    case \"$1\" in  # {key}"]
    for path, items in words.items():
        if items:
            lines.append(f"        {shlex.quote(path)}) printf '%s\\n' {' '.join(shlex.quote(i) for i in items)} ;;")
    lines.append("    esac")
    return lines


def _tables(nodes: dict[str, Node], described: bool) -> list[str]:
    """The data functions both scripts use: sub-commands, options, options taking a value, and
    choices, each a ``case`` on the command path (choices on ``path|option``)."""

    def item(name: str, text: str) -> str:
        return f"{name.replace(':', chr(92) + ':')}:{text}" if described and text else name

    out = ["_ctrpy_subs() {"]
    out += _case(nodes, "sub-commands", {p: [item(n, t) for n, t in n_.subs.items()] for p, n_ in nodes.items()})
    out += ["}", "_ctrpy_words() {"]
    out += _case(nodes, "sub-commands and their aliases", {p: [*n_.subs, *n_.aliases] for p, n_ in nodes.items()})
    out += ["}", "_ctrpy_opts() {"]
    out += _case(nodes, "options", {p: [item(o, t) for o, t in n_.options.items()] for p, n_ in nodes.items()})
    out += ["}", "_ctrpy_valued() {"]
    out += _case(nodes, "options that take a value", {p: sorted(n_.takes_value) for p, n_ in nodes.items()})
    out += ["}", "_ctrpy_choices() {"]
    out += _case(nodes, "choices", {f"{p}|{o}": c for p, n_ in nodes.items() for o, c in n_.choices.items()})
    out += ["}"]
    return out


# Walks the words before the cursor: a word that is a sub-command (or an alias of one) of the
# path so far extends it; an option that takes a value skips the next word. Shared by both
# shells (they differ only in where the words are and how candidates are offered).
_WALK = """\
    local cmdpath="" w skip=0 prev=""
    for w in "${before[@]}"; do
        if (( skip )); then skip=0; prev=""; continue; fi
        case "$w" in
            --*=*) prev=""; continue ;;
            -*) if _ctrpy_valued "$cmdpath" | grep -qxF -- "$w"; then skip=1; prev="$w"; fi; continue ;;
        esac
        if _ctrpy_words "$cmdpath" | grep -qxF -- "$w"; then
            cmdpath="${cmdpath:+$cmdpath }$w"
        fi
    done
"""

BASH = """\
_ctrpy() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    local -a before=("${{COMP_WORDS[@]:1:COMP_CWORD-1}}")
{walk}    if (( skip )); then
        COMPREPLY=($(compgen -W "$(_ctrpy_choices "$cmdpath|$prev")" -- "$cur"))
    elif [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$(_ctrpy_opts "$cmdpath")" -- "$cur"))
    else
        COMPREPLY=($(compgen -W "$(_ctrpy_subs "$cmdpath")" -- "$cur"))
    fi
}}
complete -F _ctrpy ctrpy
"""

ZSH = """\
_ctrpy() {{
    local cur="${{words[CURRENT]}}"
    local -a before=("${{(@)words[2,CURRENT-1]}}") items
{walk}    if (( skip )); then
        items=(${{(f)"$(_ctrpy_choices "$cmdpath|$prev")"}})
        (( ${{#items}} )) && compadd -a items
    elif [[ "$cur" == -* ]]; then
        items=(${{(f)"$(_ctrpy_opts "$cmdpath")"}})
        _describe -t options option items
    else
        items=(${{(f)"$(_ctrpy_subs "$cmdpath")"}})
        _describe -t commands command items
    fi
}}
"""


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (bash or zsh)."""
    nodes = tree(parser)
    if shell == "bash":
        return "\n".join(["# bash completion for ctrpy (ctrpy completion bash)", *_tables(nodes, False),
                          BASH.format(walk=_WALK)])
    if shell == "zsh":
        return "\n".join(["#compdef ctrpy", "# zsh completion for ctrpy (ctrpy completion zsh)",
                          *_tables(nodes, True), ZSH.format(walk=_WALK),
                          'if [[ "$funcstack[1]" == _ctrpy ]]; then _ctrpy "$@"; else compdef _ctrpy ctrpy; fi', ""])
    raise ValueError(f"no completion for {shell!r}")


def completion(client: Client, args: argparse.Namespace) -> int:
    from .main import _parser  # the whole tree, built as `ctrpy` builds it

    print(script(args.shell, _parser()), end="")
    return 0


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = nouns.add_parser("completion", help="print a shell completion script (bash or zsh)")
    parser.add_argument("shell", choices=("bash", "zsh"))
    parser.set_defaults(run=completion)
