"""``ctrpy completion bash|zsh``: the bash script, sourced in a real bash, completes what the CLI
accepts (sub-commands at any depth, aliases on the way, options, option choices)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ctrpy.cli.completion import script, tree
from ctrpy.cli.main import _parser, main

# Sources the script, sets COMP_WORDS/COMP_CWORD as bash does for the line typed so far (a
# trailing space starts an empty word), calls the completion function, prints COMPREPLY.
SIMULATE = r'''
source "$1"
read -ra COMP_WORDS <<< "$2"
[[ "$2" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_ctrpy
printf '%s\n' "${COMPREPLY[@]}"
'''


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "ctrpy.bash"
    path.write_text(script("bash", _parser()))
    return path


def complete(script_path: Path, line: str) -> list[str]:
    result = subprocess.run(["bash", "-c", SIMULATE, "_", str(script_path), line],
                            capture_output=True, text=True, timeout=30, check=True)
    return [word for word in result.stdout.splitlines() if word]


@pytest.mark.parametrize(("line", "expected"), [
    ("ctrpy ta", ["tasks"]),
    ("ctrpy tasks l", ["ls"]),
    ("ctrpy t ti", ["timeline"]),               # through an alias
    ("ctrpy -n web --timeout 5 ta", ["tasks"]),  # option values are skipped
    ("ctrpy --format ", ["table", "json"]),
    ("ctrpy completion ", ["bash", "zsh"]),
    ("ctrpy cri runp", ["runp"]),
])
def test_bash_completes(bash_script: Path, line: str, expected: list[str]) -> None:
    assert complete(bash_script, line) == expected


def test_bash_completes_options_of_the_command_typed(bash_script: Path) -> None:
    offered = complete(bash_script, "ctrpy tasks rm -")
    assert {"--force", "-f", "--exec-id", "--help"} <= set(offered)
    assert "--detach" not in offered  # tasks start's, not rm's


def test_the_tree_has_every_command_and_no_alias_is_offered() -> None:
    nodes = tree(_parser())
    assert {"tasks", "images", "cri", "completion"} <= set(nodes[""].subs)
    assert "task" not in nodes[""].subs and "task" in nodes[""].aliases
    assert "timeline" in nodes["tasks"].subs and nodes["t timeline"].options.keys() >= {"--help"}
    assert nodes[""].choices["--format"] == ["table", "json"]


def test_zsh_script_describes_commands(tmp_path: Path) -> None:
    text = script("zsh", _parser())
    assert text.startswith("#compdef ctrpy\n")
    assert "'timeline:where a task'\"'\"'s start went, step by step'" in text
    zsh = shutil.which("zsh")
    if zsh is not None:  # not installed by scripts/bootstrap: checked when present
        path = tmp_path / "_ctrpy"
        path.write_text(text)
        subprocess.run([zsh, "-n", str(path)], check=True, timeout=30)


def test_the_command_prints_the_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    assert "complete -F _ctrpy ctrpy" in capsys.readouterr().out
