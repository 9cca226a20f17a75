"""The CLI's contract: exit codes, one-line errors, JSON documents."""

from __future__ import annotations

import json
import subprocess
import sys

from podmgr.errors import ExitCode


def podmgr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podmgr", *args], capture_output=True, text=True)


def test_help_lists_commands() -> None:
    p = podmgr("--help")
    assert p.returncode == 0
    assert "version" in p.stdout


def test_unknown_command_is_a_usage_error() -> None:
    p = podmgr("frobnicate")
    assert p.returncode == ExitCode.USAGE
    assert "No such command" in p.stderr
    assert "Traceback" not in p.stderr


def test_version_json_is_versioned() -> None:
    p = podmgr("--bus", "unix:path=/nonexistent", "--format=json", "version")
    doc = json.loads(p.stdout)
    assert doc["version"] == 1 and doc["kind"] == "Versions"
    assert doc["data"]["appc_spec"] == "0.8.11"
    assert doc["data"]["systemd"] is None


def test_command_level_format_option() -> None:
    p = podmgr("--bus", "unix:path=/nonexistent", "version", "--format=json")
    assert json.loads(p.stdout)["kind"] == "Versions"


def test_podmgr_error_is_one_line_with_hint_and_exit_code() -> None:
    code = (
        "import sys; from podmgr.errors import NotFoundError\n"
        "import podmgr.__main__ as m, podmgr.cli as c, click\n"
        "@c.cli.command('boom')\n"
        "def boom():\n"
        "    raise NotFoundError('image example.com/x not found', hint='fetch it first')\n"
        "m.main(['boom'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == ExitCode.NOT_FOUND
    assert p.stderr.splitlines() == [
        "podmgr: error: image example.com/x not found",
        "podmgr: hint: fetch it first",
    ]


def test_the_fast_exit_keeps_exit_codes_and_flushes_output() -> None:
    """`entry` ends with os._exit: nothing written may be lost, no code changed."""
    code = (
        "import sys; from podmgr.errors import NotFoundError\n"
        "import podmgr.__main__ as m, podmgr.cli as c, click\n"
        "@c.cli.command('chatty')\n"
        "@click.argument('fail')\n"
        "def chatty(fail):\n"
        "    sys.stdout.write('x' * 100000 + '\\n')  # buffered: a pipe is no terminal\n"
        "    if fail == 'yes':\n"
        "        raise NotFoundError('gone', hint='look elsewhere')\n"
        "    return 7\n"
        "m.entry()\n"
    )
    ok = subprocess.run([sys.executable, "-c", code, "chatty", "no"], capture_output=True)
    assert ok.returncode == 7 and ok.stdout == b"x" * 100000 + b"\n"
    bad = subprocess.run([sys.executable, "-c", code, "chatty", "yes"], capture_output=True)
    assert bad.returncode == ExitCode.NOT_FOUND and len(bad.stdout) == 100001
    errors = bad.stderr.decode().splitlines()
    assert errors == ["podmgr: error: gone", "podmgr: hint: look elsewhere"]
    p = podmgr("frobnicate")  # python -m podmgr: entry() too
    assert p.returncode == ExitCode.USAGE


def test_dockers_volume_syntax_gets_podmgrs() -> None:
    """`-v /srv:/data` habits: the error spells the two options that do it."""
    from podmgr.cli.pod import parse_volume

    try:
        parse_volume("/srv:/data")
    except Exception as e:  # click.BadParameter, whose import costs this module nothing
        msg = str(e)
    else:
        raise AssertionError("accepted docker's syntax")
    assert "docker's -v syntax" in msg
    assert "--volume data,kind=host,source=/srv" in msg
    assert "--mount volume=data,target=/data" in msg
    assert parse_volume("data,kind=host,source=/srv")["source"] == "/srv"


def test_gc_with_nothing_to_collect_says_so() -> None:
    from podmgr.podctl import GcResult

    assert GcResult([], []).text() == "no pod to collect"
    assert GcResult(["u1"], ["u2"]).text() == "removed u1\nmarked u2"
