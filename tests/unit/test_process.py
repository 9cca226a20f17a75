from __future__ import annotations

import logging

import pytest

from podmgr.errors import CommandError, NotFoundError
from podmgr.process import run


def test_run_logs_the_command_and_returns_output(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="podmgr.process"):
        p = run(["echo", "a b"])
    assert p.stdout == "a b\n"
    assert "+ echo 'a b'" in caplog.text


def test_run_failure_raises_once_with_stderr() -> None:
    with pytest.raises(CommandError) as ei:
        run(["sh", "-c", "echo nope >&2; exit 3"])
    assert ei.value.returncode == 3
    assert str(ei.value) == "sh failed: nope"


def test_run_never_uses_a_shell() -> None:
    assert run(["echo", "$HOME;", "`id`"]).stdout == "$HOME; `id`\n"


def test_missing_program() -> None:
    with pytest.raises(NotFoundError, match="command not found: no-such-prog"):
        run(["no-such-prog"])
