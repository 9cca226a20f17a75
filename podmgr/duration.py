"""Durations as every podmgr command takes them: ``90s``, ``30m``, ``24h``, ``2d``,
``500ms``, compounds such as ``1h30m``, or a bare number of seconds.

One parser for ``gc --grace-period``, ``image gc --grace-period``, ``status --wait``,
``--expire-prepared`` and the metadata service's ``--idle-exit``. Standard library only
and no regular expressions: the metadata service reads its option with it as it starts.
"""

from __future__ import annotations

from podmgr.errors import UsageError

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: Ten years: longer than any wait or grace period means, within what timedelta,
#: time.sleep() and a thread's wait hold (past that they overflow).
MAX = 10 * 366 * 86400
HINT = f"write it like 90s, 30m, 1h30m, 24h or 2d; at most {MAX // 86400}d"


def _number(text: str) -> float | None:
    """Digits with at most one decimal point (not float()'s inf, nan, 1e9 or 1_000)."""
    whole, _, frac = text.partition(".")
    if not whole.isascii() or not whole.isdigit() or (frac and not frac.isdigit()):
        return None
    return float(text)


def seconds(text: str) -> float | None:
    """The duration ``text`` means, in seconds; None if it is none."""
    t = text.strip().lower()
    if not t:
        return None
    bare = _number(t)
    if bare is not None:
        total = bare
    else:
        total, i = 0.0, 0
        while i < len(t):
            j = i
            while j < len(t) and (t[j].isdigit() or t[j] == "."):
                j += 1
            k = j
            while k < len(t) and t[k].isalpha():
                k += 1
            value = _number(t[i:j]) if j > i else None
            unit = UNITS.get(t[j:k])
            if value is None or unit is None:
                return None
            total += value * unit
            i = k
    return total if 0 <= total <= MAX else None


def parse(text: str) -> float:
    """:func:`seconds`, or a UsageError that says how to write one."""
    value = seconds(text)
    if value is None:
        raise UsageError(f"invalid duration {text!r}", hint=HINT)
    return value
