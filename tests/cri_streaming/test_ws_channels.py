"""The WebSocket channel framing, the exit statuses and the single-use tokens, without a daemon."""

from __future__ import annotations

import json

import pytest

from ctrpy import errors
from ctrpy.manager.cri.streaming import channels
from ctrpy.manager.cri.streaming.tokens import TokenCache


def test_protocol_choice_prefers_the_newest() -> None:
    assert channels.select(["channel.k8s.io", "v4.channel.k8s.io", "v5.channel.k8s.io"]) is channels.BY_NAME[
        "v5.channel.k8s.io"]
    assert channels.select(["base64.channel.k8s.io"]) is channels.BY_NAME["base64.channel.k8s.io"]
    assert channels.select(["SPDY/3.1+portforward.k8s.io"]) is None


def test_binary_and_base64_framing() -> None:
    v5, v4 = channels.BY_NAME["v5.channel.k8s.io"], channels.BY_NAME["v4.channel.k8s.io"]
    b64 = channels.BY_NAME["v4.base64.channel.k8s.io"]
    assert channels.encode(v5, 1, b"hi") == b"\x01hi"
    assert channels.decode(v5, b"\x00abc") == (0, b"abc")
    assert channels.encode(b64, 2, b"hi") == "2aGk="
    assert channels.decode(b64, "0aGk=") == (0, b"hi")
    assert channels.decode(b64, "0%%%") is None and channels.decode(b64, b"\x00x") is None
    assert channels.decode(v5, b"") is None
    # Only v5 has the half-close message; v4 ignores it, as the kubelet does.
    assert channels.decode(v5, b"\xff\x00") == (channels.CLOSE, b"\x00")
    assert channels.decode(v4, b"\xff\x00") is None


def test_exit_statuses_per_version() -> None:
    v4, v1 = channels.BY_NAME["v4.channel.k8s.io"], channels.BY_NAME["channel.k8s.io"]
    assert channels.exit_status(v4, 0, ["true"]) == b'{"metadata":{},"status":"Success"}'
    assert channels.exit_status(v1, 0, ["true"]) == b""
    failure = json.loads(channels.exit_status(v4, 42, ["sh", "-c", "exit 42"]))
    assert failure["details"] == {"causes": [{"reason": "ExitCode", "message": "42"}]}
    assert failure["reason"] == "NonZeroExitCode" and failure["status"] == "Failure"
    assert channels.exit_status(v1, 42, ["false"]).startswith(b"command terminated with non-zero exit code")
    internal = json.loads(channels.internal_error(v4, "boom"))
    assert internal["code"] == 500 and internal["reason"] == "InternalError" and "boom" in internal["message"]


def test_resize_messages_may_be_split_or_joined() -> None:
    sizes = channels.ResizeDecoder()
    assert sizes.feed(b'{"Width":80,') == []
    assert sizes.feed(b'"Height":24}{"Width":100,"Height":30}') == [(80, 24), (100, 30)]
    assert sizes.feed(b' {"Width":-1,"Height":5} ["x"] {"Width":1,"Height":2}') == [(1, 2)]


def test_tokens_are_single_use_typed_and_expire() -> None:
    now = [0.0]
    cache = TokenCache(ttl=60.0, limit=3, clock=lambda: now[0])
    token = cache.issue("exec", "request")
    assert len(token) >= 11
    assert cache.take("attach", token) is None  # the wrong kind burns it too
    token = cache.issue("exec", "request")
    assert cache.take("exec", token) == "request"
    assert cache.take("exec", token) is None
    late = cache.issue("exec", "late")
    now[0] = 61.0
    assert cache.take("exec", late) is None
    for _ in range(3):
        cache.issue("exec", "x")
    with pytest.raises(errors.ResourceExhausted):
        cache.issue("exec", "x")
    now[0] = 200.0
    cache.issue("exec", "x")  # the expired ones made room
