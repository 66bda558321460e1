"""The log line format: one JSON object per line, ``ts``, ``level`` and ``event`` first."""

from __future__ import annotations

import json
from typing import Any

import pytest

from receiver.logging import configure, delivery_context, get_logger


def lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().out.split("\n")[:-1]


def log_one(capsys: pytest.CaptureFixture[str], **fields: Any) -> str:
    configure()
    capsys.readouterr()
    get_logger().info("test.line", **fields)
    [line] = lines(capsys)
    return line


def test_line_is_one_json_object_with_ts_level_and_event_first(
        capsys: pytest.CaptureFixture[str]) -> None:
    line = log_one(capsys, status=202, duration_ms=0.42, refs=["branch:main"], head=None)
    doc = json.loads(line)
    assert list(doc)[:3] == ["ts", "level", "event"]
    assert (doc["level"], doc["event"]) == ("info", "test.line")
    assert (doc["status"], doc["duration_ms"], doc["refs"], doc["head"]) == \
        (202, 0.42, ["branch:main"], None)


@pytest.mark.parametrize("text", ["caf\u00e9", "a\u2028b", "a\u0085b", "\U0001f680", "a\nb\rc"],
                         ids=["latin", "line_separator", "next_line", "astral", "newlines"])
def test_line_stays_one_ascii_line_whatever_the_text(capsys: pytest.CaptureFixture[str],
                                                     text: str) -> None:
    # str.splitlines (and some log shippers) break at U+2028 and U+0085 too
    line = log_one(capsys, ref=text)
    assert line.isascii()
    assert len(line.splitlines()) == 1
    assert json.loads(line)["ref"] == text


def test_integer_past_64_bits_is_written_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(log_one(capsys, size=2**70))["size"] == 2**70


def test_value_json_cannot_hold_is_written_as_its_repr(
        capsys: pytest.CaptureFixture[str]) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    assert json.loads(log_one(capsys, thing=Opaque()))["thing"] == "<opaque>"


def test_delivery_context_fields_are_on_every_line_inside_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    configure()
    capsys.readouterr()
    with delivery_context("d-1", "gitlab", "group/project"):
        get_logger().info("one")
        get_logger().warning("two")
    get_logger().info("three")
    docs = [json.loads(line) for line in lines(capsys)]
    assert [(d["event"], d.get("delivery_id"), d.get("repository")) for d in docs] == [
        ("one", "d-1", "group/project"), ("two", "d-1", "group/project"),
        ("three", None, None)]
