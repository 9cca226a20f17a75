"""Parsing journalctl -o json lines into a pod's log entries."""

from __future__ import annotations

import json

import pytest

from podmgr import journal


def line(**fields: object) -> str:
    return json.dumps({"__CURSOR": "c", "__REALTIME_TIMESTAMP": "7", **fields})


def test_an_apps_line_is_an_entry() -> None:
    e = journal._entry(line(MESSAGE="hello", PODMGR_APP="web", _PID="42"))
    assert e == journal.Entry(app="web", message="hello", cursor="c", time_usec=7)


def test_binary_messages_are_decoded() -> None:
    e = journal._entry(line(MESSAGE=list(b"caf\xc3\xa9"), PODMGR_APP="web", _PID="42"))
    assert e is not None and e.message == "café"


def test_systemds_own_messages_about_the_unit_are_not_the_apps_output() -> None:
    # systemd 257 tags "Started …" and "Deactivated successfully." with LogExtraFields.
    msg = "podmgr-x-web.service: Deactivated successfully."
    assert journal._entry(line(MESSAGE=msg, PODMGR_APP="web", _PID="1")) is None


def test_garbage_is_skipped() -> None:
    assert journal._entry("not json") is None


def test_timestamps_are_iso_8601_with_every_microsecond() -> None:
    from datetime import UTC, datetime

    usec = 1_796_000_000_123_457  # a float of the seconds would round the last digit
    text = journal.timestamp(usec)
    t = datetime.fromisoformat(text)
    assert t.utcoffset() is not None  # an offset, as journalctl -o short-iso-precise
    assert t.astimezone(UTC) == datetime(2026, 11, 30, 0, 53, 20, 123457, tzinfo=UTC)
    assert text.split("T")[1][8:15] == ".123457"
    assert journal.timestamp(usec) < journal.timestamp(usec + 1)


def test_logs_timestamps_prefix_each_line(capsys: pytest.CaptureFixture[str]) -> None:
    from podmgr.fastpath import emitter

    e = journal.Entry("web", "hello", "c", 1_796_000_000_000_001)
    emitter(True, timestamps=True)(e)
    emitter(False)(e)
    first, second = capsys.readouterr().out.splitlines()
    assert first == f"{journal.timestamp(e.time_usec)} web | hello"
    assert second == "hello"
