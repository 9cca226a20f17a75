"""The command-line cache in front of click (podmgr.fastpath): what it records and when
it lets click take a command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from podmgr import fastpath
from podmgr.podtemplate import Source

pytestmark = pytest.mark.unit

SOURCE = Source({"apps": [{"image": "example.com/app"}]}, [["name", "example.com/app", {}]])


@pytest.mark.parametrize(
    ("argv", "split"),
    [
        (["run", "img"], ("run", "/default", ["img"])),
        (["--dir", "/s", "start", "img", "--", "-x"], ("start", "/s", ["img", "--", "-x"])),
        (["--dir=/s", "run", "--net=host", "img"], ("run", "/s", ["--net=host", "img"])),
        (["--debug", "run", "img"], None),  # any other global option: click's
        (["--dir"], None),
        (["prepare", "img"], None),
        (["list"], None),
        ([], None),
    ],
)
def test_which_command_lines_are_taken(
    argv: list[str], split: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PODMGR_DIR", "/default")
    assert fastpath._split(argv) == split


def test_a_record_is_found_by_the_same_command_line_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    (state / "pods" / ".templates").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    argv = ["--dir", str(state), "run", "--net=host", "example.com/app"]
    fastpath.remember(argv, "run", SOURCE)
    found = fastpath._lookup(argv)
    assert found is not None
    _, _, path, text = found
    assert json.loads(path.read_text()) == {"argv": text, **_plain(SOURCE)}
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    # Another argument, working directory or bus is another record.
    others = [fastpath._lookup([*argv, "-v"])]
    monkeypatch.setenv("PODMGR_BUS_ADDRESS", "unix:path=/x")
    others.append(fastpath._lookup(argv))
    monkeypatch.delenv("PODMGR_BUS_ADDRESS")
    monkeypatch.chdir(state)
    others.append(fastpath._lookup(argv))
    assert all(o is not None and o[2] != path and not o[2].exists() for o in others)


def _plain(source: Source) -> dict[str, object]:
    return {"spec": source.spec, "lookups": source.lookups}


def test_nothing_is_recorded_for_another_command_or_global_option(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "pods" / ".templates").mkdir(parents=True)
    fastpath.remember(["--dir", str(state), "run", "img"], "start", SOURCE)
    fastpath.remember(["--dir", str(state), "--debug", "run", "img"], "run", SOURCE)
    fastpath.remember(["--dir", str(state), "run", "img"], "run", None)
    fastpath.remember(None, "run", SOURCE)
    assert not (state / "pods" / ".templates" / ".argv").exists()


def test_records_are_bounded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "pods" / ".templates").mkdir(parents=True)
    for i in range(fastpath.KEEP + 5):
        fastpath.remember(["--dir", str(state), "run", f"img{i}"], "run", SOURCE)
    assert len(list((state / "pods" / ".templates" / ".argv").iterdir())) == fastpath.KEEP


def test_click_takes_what_is_not_a_valid_record(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "pods" / ".templates").mkdir(parents=True)
    argv = ["--dir", str(state), "run", "example.com/app"]
    assert fastpath.main(argv) is None  # never seen
    fastpath.remember(argv, "run", SOURCE)
    found = fastpath._lookup(argv)
    assert found is not None
    path = found[2]
    # A record that names another command line (a checksum collision) is a miss.
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "argv": doc["argv"] + " "}))
    assert fastpath.main(argv) is None
    path.write_text("{")
    assert fastpath.main(argv) is None
    # A valid record whose store does not exist: a miss, and nothing is created.
    path.write_text(json.dumps(doc))
    before = sorted(p.name for p in (state / "pods").iterdir())
    if os.geteuid() == 0:
        assert fastpath.main(argv) is None
    assert sorted(p.name for p in (state / "pods").iterdir()) == before
