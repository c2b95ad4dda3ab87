"""``[shim] spare``: on by default, parses, renders back, refuses what is not a boolean."""

from __future__ import annotations

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager import config


def test_on_by_default_and_rendered() -> None:
    defaults = config.Config()
    assert defaults.shim_spare is True
    assert "spare = true" in config.render(defaults)


def test_off_parses_and_reads_back() -> None:
    parsed = config.parse("version = 1\n[shim]\nspare = false\n")
    assert parsed.shim_spare is False and parsed.shim_template is True
    assert config.parse(config.render(parsed)) == parsed


def test_spare_must_be_a_boolean() -> None:
    with pytest.raises(InvalidArgument, match="shim.spare"):
        config.parse('version = 1\n[shim]\nspare = "yes"\n')
