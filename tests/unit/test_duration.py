"""One duration parser for every command (podmgr.duration)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from podmgr import duration
from podmgr.errors import UsageError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0), ("1.5", 1.5), ("90s", 90.0), ("30m", 1800.0), ("24h", 86400.0),
        ("2d", 172800.0), ("500ms", 0.5), ("1h30m", 5400.0), ("1d2h3m4s", 93784.0),
        (" 5M ", 300.0), ("0", 0.0), ("3660d", 3660 * 86400.0),
    ],
)  # fmt: skip
def test_forms(text: str, seconds: float) -> None:
    assert duration.parse(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "h", "1x", "1h30", "-5s", "inf", "nan", "1e9", "1_000", "1..5s", "٣s", "1h 30m",
     "3661d", "99999999999999999999d", "5m\n1s"],
)  # fmt: skip
def test_what_is_not_a_duration_is_one_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="invalid duration") as e:
        duration.parse(text)
    assert "1h30m" in (e.value.hint or "")


def test_gc_and_image_gc_take_the_same_forms() -> None:
    """Both grace periods go through this parser (they disagreed on 1h30m)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "podmgr"
    sources = [(root / "cli" / f).read_text() for f in ("pod.py", "image.py", "metadata.py")]
    assert all("duration" in s for s in sources)
    assert "def parse_duration" not in "".join(p.read_text() for p in root.rglob("*.py"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=24))
def test_any_text_is_a_duration_or_refused(text: str) -> None:
    value = duration.seconds(text)
    assert value is None or 0 <= value <= duration.MAX
