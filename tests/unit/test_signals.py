"""Signal names for ``podmgr kill`` (podmgr.podctl.parse_signal)."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podmgr.errors import UsageError
from podmgr.podctl import KILL_SIGNALS, parse_signal

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "sig"),
    [
        ("KILL", signal.SIGKILL), ("TERM", signal.SIGTERM), ("SIGTERM", signal.SIGTERM),
        ("hup", signal.SIGHUP), ("sigusr1", signal.SIGUSR1), (" INT ", signal.SIGINT),
        ("9", signal.SIGKILL), ("15", signal.SIGTERM), ("1", signal.SIGHUP),
        ("WINCH", signal.SIGWINCH), ("QUIT", signal.SIGQUIT), ("USR2", signal.SIGUSR2),
    ],
)  # fmt: skip
def test_names_and_numbers(text: str, sig: int) -> None:
    assert parse_signal(text) == sig


@pytest.mark.parametrize(
    "text", ["", "SIG", "BOGUS", "SIGBOGUS", "0", "99", "-9", "1e3", "STOP", "CONT", "ALRM", "19"]
)
def test_unknown_or_unforwardable_signals_name_the_choices(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_signal(text)
    # One line naming the problem, and the choices as the fix.
    assert "\n" not in str(e.value)
    assert all(n in (e.value.hint or "") for n in KILL_SIGNALS)


@settings(max_examples=300, deadline=1000)
@given(st.text(max_size=200))
def test_any_text_is_a_choice_or_a_usage_error(text: str) -> None:
    try:
        sig = parse_signal(text)
    except UsageError as e:
        assert len(str(e)) < 200
    else:
        assert signal.Signals(sig).name.removeprefix("SIG") in KILL_SIGNALS
