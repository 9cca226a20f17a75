"""The last lines of a run, read in-process (podmgr.sdjournal), against journalctl's."""

from __future__ import annotations

from pathlib import Path

import pytest
from podfix import Podmgr, build_image

from podmgr import journal, sdjournal

INSECURE = "--insecure-options=image"
CHATTY = r"""
for i in 1 2 3 4 5; do echo "line $i"; done
printf 'bytes \377 not utf-8\n'
head -c 6000 /dev/zero | tr '\0' x; echo
echo last >&2
"""


@pytest.fixture(scope="module")
def pm(tmp_path_factory: pytest.TempPathFactory) -> Podmgr:
    return Podmgr(tmp_path_factory.mktemp("podmgr-state"))


def test_in_process_read_gives_what_journalctl_gives(pm: Podmgr, tmp_path: Path) -> None:
    aci = build_image(tmp_path / "chatty.aci", "example.com/chatty", ["/bin/sh", "-c", CHATTY])
    saved = tmp_path / "uuid"
    p = pm("run", INSECURE, "--uuid-file-save", str(saved), str(aci))
    uuid = saved.read_text().strip()
    long_line = "x" * 6000
    want = ["line 1", "line 2", "line 3", "line 4", "line 5", "bytes \ufffd not utf-8"]
    want += [long_line, "last"]
    # What run printed came from the in-process read (the pod was done within 0.1 s).
    assert p.stdout.splitlines() == want
    native = journal.read_tail(uuid, since="@0")
    assert [e.message for e in native] == want
    assert {e.app for e in native} == {"chatty"}
    # journalctl's read (podmgr logs) agrees entry for entry, cursors and times included;
    # with --all, the long line is whole there too.
    assert native == journal.read(uuid, since="@0")
    assert pm("logs", uuid).stdout.splitlines() == want
    # After a cursor: the entries after that one.
    assert journal.read_tail(uuid, after_cursor=native[2].cursor) == native[3:]
    assert journal.read_tail(uuid, after_cursor=native[-1].cursor) == []


def test_without_libsystemd_journalctl_reads(
    pm: Podmgr, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aci = build_image(tmp_path / "one.aci", "example.com/one", ["/bin/echo", "one line"])
    saved = tmp_path / "uuid"
    pm("run", INSECURE, "--uuid-file-save", str(saved), str(aci))
    uuid = saved.read_text().strip()
    monkeypatch.setattr(sdjournal, "LIBSYSTEMD", "libsystemd-missing.so.0")
    monkeypatch.setattr(sdjournal, "_lib", None)
    assert sdjournal.read(f"PODMGR_POD={uuid}", since_usec=None, after_cursor=None) is None
    assert [e.message for e in journal.read_tail(uuid, since="@0")] == ["one line"]
