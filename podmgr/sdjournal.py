"""A minimal sd-journal reader (libsystemd through ctypes) for :func:`podmgr.journal.read_tail`.

Only what that read needs: one match, a start point (a time or the cursor of the last entry
already seen), and per entry the message, the app, the PID, the cursor and the time.
"""

from __future__ import annotations

import ctypes
import os

from podmgr import logger

log = logger.get(__name__)

LIBSYSTEMD = "libsystemd.so.0"
#: sd_journal_open's flag for the local machine's journal only (sd-journal.h).
SD_JOURNAL_LOCAL_ONLY = 1

_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None

#: One entry: (PODMGR_APP, MESSAGE, _PID, cursor, realtime µs).
Row = tuple[str, str, str, str, int]


def _load() -> tuple[ctypes.CDLL, ctypes.CDLL] | None:
    global _lib, _libc
    if _lib is None:
        try:
            lib = ctypes.CDLL(LIBSYSTEMD, use_errno=True)
            libc = ctypes.CDLL(None)
        except OSError as e:
            log.debug("journal: %s cannot be loaded (%s); journalctl reads instead", LIBSYSTEMD, e)
            return None
        vp, cp, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
        for name, args in {
            "sd_journal_open": [ctypes.POINTER(vp), ctypes.c_int],
            "sd_journal_close": [vp],
            "sd_journal_add_match": [vp, cp, sz],
            "sd_journal_set_data_threshold": [vp, sz],
            "sd_journal_seek_realtime_usec": [vp, ctypes.c_uint64],
            "sd_journal_seek_cursor": [vp, cp],
            "sd_journal_test_cursor": [vp, cp],
            "sd_journal_next": [vp],
            "sd_journal_get_data": [vp, cp, ctypes.POINTER(vp), ctypes.POINTER(sz)],
            "sd_journal_get_cursor": [vp, ctypes.POINTER(vp)],
            "sd_journal_get_realtime_usec": [vp, ctypes.POINTER(ctypes.c_uint64)],
        }.items():
            f = getattr(lib, name)
            f.argtypes = args
            f.restype = None if name == "sd_journal_close" else ctypes.c_int
        libc.free.argtypes = [vp]
        libc.free.restype = None
        _lib, _libc = lib, libc
    assert _libc is not None
    return _lib, _libc


def preload() -> None:
    """Load libsystemd now (0.5-1 ms), while the caller waits for something else."""
    _load()


def read(match: str, *, since_usec: int | None, after_cursor: str | None) -> list[Row] | None:
    """The entries matching ``match`` (``FIELD=value``) after ``after_cursor``, else from
    ``since_usec`` (else from the start), in the journal's order; None where libsystemd
    is missing or the journal cannot be opened (the caller runs journalctl instead)."""
    loaded = _load()
    if loaded is None:
        return None
    lib, libc = loaded
    j = ctypes.c_void_p()
    r = lib.sd_journal_open(ctypes.byref(j), SD_JOURNAL_LOCAL_ONLY)
    if r < 0:
        log.debug("journal: sd_journal_open: %s", os.strerror(-r))
        return None
    try:
        lib.sd_journal_set_data_threshold(j, 0)  # whole fields, as journalctl -o json gives
        m = match.encode()
        if lib.sd_journal_add_match(j, m, len(m)) < 0:
            return None
        cursor = after_cursor.encode() if after_cursor else None
        if cursor is not None:
            if lib.sd_journal_seek_cursor(j, cursor) < 0:
                return None
        elif since_usec is not None:
            lib.sd_journal_seek_realtime_usec(j, since_usec)
        data, size = ctypes.c_void_p(), ctypes.c_size_t()

        def field(name: bytes) -> str:
            if lib.sd_journal_get_data(j, name, ctypes.byref(data), ctypes.byref(size)) < 0:
                return ""
            raw = ctypes.string_at(data.value or 0, size.value)  # b"NAME=value"
            return raw[len(name) + 1 :].decode(errors="replace")

        rows: list[Row] = []
        first = True
        while (r := lib.sd_journal_next(j)) > 0:
            # A seek to a cursor lands on that entry, which was seen already.
            if first and cursor is not None and lib.sd_journal_test_cursor(j, cursor) > 0:
                first = False
                continue
            first = False
            c, usec = ctypes.c_void_p(), ctypes.c_uint64()
            text = ""
            if lib.sd_journal_get_cursor(j, ctypes.byref(c)) >= 0 and c.value:
                text = ctypes.string_at(c.value).decode()
                libc.free(c)
            lib.sd_journal_get_realtime_usec(j, ctypes.byref(usec))
            rows.append((field(b"PODMGR_APP"), field(b"MESSAGE"), field(b"_PID"), text, usec.value))
        if r < 0:
            log.debug("journal: sd_journal_next: %s", os.strerror(-r))
            return None
        return rows
    finally:
        lib.sd_journal_close(j)
