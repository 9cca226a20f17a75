from __future__ import annotations

import logging
from pathlib import Path

import pytest

from podmgr.errors import CommandError, NotFoundError
from podmgr.process import run, run_many


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


def test_run_many_runs_the_commands_at_once(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    # The first waits for the second: one after the other, it would give up.
    waits = f"for i in $(seq 500); do [ -e {flag} ] && exit 0; sleep 0.01; done; exit 1"
    first, second, third = run_many(
        [["sh", "-c", waits], ["touch", str(flag)], ["sh", "-c", "echo out; exit 4"]]
    )
    assert first.returncode == 0 and second.returncode == 0
    assert (third.returncode, third.stdout) == (4, "out\n")  # unchecked: the caller judges


def test_run_many_missing_program() -> None:
    with pytest.raises(NotFoundError, match="command not found: no-such-prog"):
        run_many([["true"], ["no-such-prog"]])
