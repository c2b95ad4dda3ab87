"""``[shim]`` deadlines: ``call_timeout`` and ``state_timeout`` parse, render and refuse nonsense."""

from __future__ import annotations

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager import config
from ctrpy.manager.runtime import DEFAULT_TIMEOUTS


def test_defaults_match_the_shim_client() -> None:
    defaults = config.Config()
    assert (defaults.shim_call_timeout, defaults.shim_state_timeout) == (
        DEFAULT_TIMEOUTS.call,
        DEFAULT_TIMEOUTS.state,
    )
    rendered = config.render(defaults)
    assert "call_timeout = 30.0" in rendered and "state_timeout = 2.0" in rendered


def test_deadlines_parse_and_read_back() -> None:
    parsed = config.parse("version = 1\n[shim]\ncall_timeout = 5\nstate_timeout = 0.5\n")
    assert (parsed.shim_call_timeout, parsed.shim_state_timeout) == (5.0, 0.5)
    assert parsed.shim_template is True
    assert config.parse(config.render(parsed)) == parsed


@pytest.mark.parametrize("value", ["0", "-1", "true", '"5"', "inf", "nan"])
def test_a_deadline_must_be_a_positive_number(value: str) -> None:
    with pytest.raises(InvalidArgument, match="shim.call_timeout"):
        config.parse(f"version = 1\n[shim]\ncall_timeout = {value}\n")


def test_unknown_shim_key_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown keys in \\[shim\\]"):
        config.parse("version = 1\n[shim]\ncall_timeot = 5\n")
