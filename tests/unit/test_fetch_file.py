"""podmgr.fetch.file: local images are used in place."""

from __future__ import annotations

from pathlib import Path

import pytest

from podmgr.errors import InvalidError, NotFoundError
from podmgr.fetch.file import is_local, local_path


def test_paths_and_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "my app.aci"
    img.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert local_path(str(img)) == img
    assert local_path("my app.aci") == img
    assert local_path(f"file://{tmp_path}/my%20app.aci") == img
    assert local_path(f"file://localhost{tmp_path}/my%20app.aci") == img
    assert is_local("my app.aci") and is_local("./nope.aci") and is_local("file:///x")
    assert not is_local("example.com/app") and not is_local("https://example.com/a.aci")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        local_path(str(tmp_path / "missing.aci"))
    with pytest.raises(InvalidError, match="not a regular file"):
        local_path(str(tmp_path))
    with pytest.raises(InvalidError, match="host 'server' is not local"):
        local_path("file://server/share/a.aci")
