"""``podmgr trust``: exit codes, one-line errors, review, list and rm."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_trust_keys import Keys, env_for, keys, write_key

from podmgr.cli import cli
from podmgr.errors import ExitCode

__all__ = ["keys"]  # the session fixture, imported so that pytest finds it here


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "etc", tmp_path / "vendor"


@pytest.fixture
def keyfile(keys: Keys, tmp_path: Path) -> Path:
    p = tmp_path / "ed.asc"
    p.write_bytes(keys.public("ed"))
    return p


def podmgr(roots: tuple[Path, Path], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podmgr", *args],
        capture_output=True,
        text=True,
        env=env_for(*roots),
        stdin=subprocess.DEVNULL,
    )


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in p.stderr.splitlines() if line.startswith("podmgr: error:")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_rkt_syntax_with_skip_review(keys: Keys, roots: tuple[Path, Path], keyfile: Path) -> None:
    p = podmgr(roots, "trust", "--prefix", "example.com/app", "--skip-fingerprint-review",
               str(keyfile))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"trusted {keys.fpr['ed']} for prefix example.com/app"
    assert (roots[0] / "prefix.d" / "example.com,app" / keys.fpr["ed"]).is_file()


def test_refuses_without_review_when_not_interactive(
    roots: tuple[Path, Path], keyfile: Path
) -> None:
    p = podmgr(roots, "trust", "--root", str(keyfile))
    assert p.returncode == ExitCode.USAGE
    assert "fingerprint review" in one_line_error(p)
    assert "--skip-fingerprint-review" in p.stderr
    assert not roots[0].exists()


def test_needs_prefix_or_root(roots: tuple[Path, Path], keyfile: Path) -> None:
    p = podmgr(roots, "trust", "--skip-fingerprint-review", str(keyfile))
    assert p.returncode == ExitCode.USAGE
    assert "--prefix" in one_line_error(p)


def test_add_subcommand_and_invalid_key(roots: tuple[Path, Path], tmp_path: Path) -> None:
    junk = tmp_path / "junk.asc"
    junk.write_text("hello\n")
    p = podmgr(roots, "trust", "add", "--root", "--skip-fingerprint-review", str(junk))
    assert p.returncode == ExitCode.INVALID
    assert "no OpenPGP public key" in one_line_error(p)


def test_list_json_and_rm(keys: Keys, roots: tuple[Path, Path], keyfile: Path) -> None:
    write_key(roots[1], keys, "vendor", "example.org")
    added = podmgr(roots, "trust", "--root", "--skip-fingerprint-review", str(keyfile))
    assert added.returncode == 0, added.stderr
    p = podmgr(roots, "trust", "list", "--format=json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["kind"] == "trust.list"
    got = {(k["fingerprint"], k["prefix"], k["origin"]) for k in doc["data"]}
    assert got == {(keys.fpr["ed"], None, "admin"), (keys.fpr["vendor"], "example.org", "vendor")}
    assert "ed <ed@example.com>" in podmgr(roots, "trust", "list").stdout

    p = podmgr(roots, "trust", "rm", keys.fpr["vendor"])
    assert p.returncode == 0, p.stderr
    assert "masked vendor key" in p.stdout
    p = podmgr(roots, "trust", "rm", keys.fpr["vendor"])
    assert p.returncode == ExitCode.NOT_FOUND
    assert keys.fpr["vendor"] in one_line_error(p)
    assert podmgr(roots, "trust", "rm", "nothex").returncode == ExitCode.INVALID


def test_help_shows_subcommands(roots: tuple[Path, Path]) -> None:
    p = podmgr(roots, "trust", "--help")
    assert p.returncode == 0
    for sub in ("add", "list", "rm"):
        assert sub in p.stdout


def test_plain_http_needs_insecure_flag(roots: tuple[Path, Path]) -> None:
    p = podmgr(roots, "trust", "--root", "--skip-fingerprint-review", "http://127.0.0.1:9/k")
    assert p.returncode == ExitCode.USAGE
    assert "plain HTTP" in one_line_error(p)


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_key_from_url(keys: Keys, roots: tuple[Path, Path], http_dir: tuple[Path, str]) -> None:
    served, base = http_dir
    (served / "pubkeys.asc").write_bytes(keys.public("rsa"))
    p = podmgr(roots, "trust", "--prefix", "example.com", "--skip-fingerprint-review",
               "--insecure-allow-http", f"{base}/pubkeys.asc")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert (roots[0] / "prefix.d" / "example.com" / keys.fpr["rsa"]).is_file()
    p = podmgr(roots, "trust", "--prefix", "example.com", "--skip-fingerprint-review",
               "--insecure-allow-http", f"{base}/missing.asc")  # fmt: skip
    assert p.returncode == ExitCode.NETWORK
    assert "HTTP 404" in one_line_error(p)


@pytest.mark.parametrize(("answer", "code"), [("y\n", 0), ("n\n", 1)])
def test_interactive_review(
    keys: Keys,
    roots: tuple[Path, Path],
    keyfile: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    code: int,
) -> None:
    monkeypatch.setattr("podmgr.cli.trust._interactive", lambda: True)
    result = CliRunner().invoke(
        cli, ["trust", "--prefix", "example.com/app", str(keyfile)], input=answer,
        env=env_for(*roots),
    )  # fmt: skip
    assert result.exit_code == code
    review = result.output
    fpr = keys.fpr["ed"]
    assert " ".join(fpr[i : i + 4] for i in range(0, 40, 4)) in review
    assert "ed <ed@example.com>" in review
    stored = roots[0] / "prefix.d" / "example.com,app" / fpr
    assert stored.is_file() is (code == 0)


def test_discovered_keyring_with_two_keys(
    keys: Keys,
    roots: tuple[Path, Path],
    http_dir: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served, base = http_dir
    (served / "pubkeys.gpg").write_bytes(keys.public("ed") + keys.public("rsa"))
    asked: list[str] = []

    def discover_pubkeys(name: str, options: object = None) -> list[str]:
        asked.append(name)
        return [f"{base}/pubkeys.gpg"]

    monkeypatch.setattr("podmgr.fetch.discovery.discover_pubkeys", discover_pubkeys)
    result = CliRunner().invoke(
        cli, ["trust", "--prefix", "example.com/app", "--skip-fingerprint-review",
              "--insecure-allow-http"], env=env_for(*roots),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert asked == ["example.com/app"]
    for name in ("ed", "rsa"):
        assert (roots[0] / "prefix.d" / "example.com,app" / keys.fpr[name]).is_file()


def test_no_key_and_root_is_a_usage_error(roots: tuple[Path, Path]) -> None:
    p = podmgr(roots, "trust", "--root", "--skip-fingerprint-review")
    assert p.returncode == ExitCode.USAGE
    assert "KEY_FILE_OR_URL" in one_line_error(p)
