"""Parsing journalctl -o json lines into a pod's log entries."""

from __future__ import annotations

import json

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
