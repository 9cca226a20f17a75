"""Test markers by directory, and the rule that system tests run inside the box.

- tests/unit:   ``unit``   — pure, run anywhere, no root, no systemd.
- tests/system: ``system`` — run inside the throwaway systemd box (``make test`` boots it).
- tests/host:   ``system`` — boot boxes themselves; run on the host as root.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent
IN_BOX = bool(os.environ.get("PODMGR_BOX"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).relative_to(HERE).parts[0]
        if kind == "unit":
            item.add_marker(pytest.mark.unit)
        elif kind == "system":
            item.add_marker(pytest.mark.system)
            if not IN_BOX:
                item.add_marker(pytest.mark.skip(
                    reason="system tests run inside the box: make test-system "
                    "(or python3 tests/box.py run dev -- python3 -m pytest …)"))
        elif kind == "host":
            item.add_marker(pytest.mark.system)
            if os.geteuid() != 0 or IN_BOX:
                item.add_marker(pytest.mark.skip(reason="boots boxes: needs root on the host"))
