"""Loggers that import :mod:`logging` only for a record they emit.

``import logging`` costs 25-30 ms on the machines we measure (it brings traceback,
string, weakref and more), a tenth of ``podmgr run``, which logs nothing at its default
level. So a module's logger (:func:`get`) decides here whether a record is wanted, and
only then hands it to :mod:`logging`, under the same logger name: handlers, levels and
pytest's ``caplog`` work as usual. Once something has imported logging, logging decides.
"""

from __future__ import annotations

import sys
from typing import Any

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40

#: How the CLI's records look on stderr.
FORMAT = "podmgr: %(levelname)s: %(message)s"

_level = WARNING
_configured = False


def set_level(level: int) -> None:
    """The lowest level emitted (the CLI's ``--debug`` sets DEBUG)."""
    global _level
    _level = level
    if level < WARNING:
        _logging().getLogger().setLevel(level)


def _logging() -> Any:
    import logging

    global _configured
    if not _configured:
        _configured = True
        # A no-op when the root logger has handlers already (pytest's, an embedder's).
        logging.basicConfig(format=FORMAT, level=_level)
    return logging


class Logger:
    """The subset of :class:`logging.Logger` that podmgr uses."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def _enabled(self, level: int) -> bool:
        logging = sys.modules.get("logging")
        if logging is None:
            return level >= _level
        return bool(logging.getLogger(self.name).isEnabledFor(level))

    def _emit(self, level: int, msg: str, args: tuple[object, ...], exc: bool = False) -> None:
        # stacklevel: the record names the caller, not this module.
        _logging().getLogger(self.name).log(level, msg, *args, exc_info=exc, stacklevel=3)

    def debug(self, msg: str, *args: object) -> None:
        if self._enabled(DEBUG):
            self._emit(DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        if self._enabled(INFO):
            self._emit(INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        if self._enabled(WARNING):
            self._emit(WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        if self._enabled(ERROR):
            self._emit(ERROR, msg, args)

    def exception(self, msg: str, *args: object) -> None:
        """An error with the traceback of the exception being handled."""
        if self._enabled(ERROR):
            self._emit(ERROR, msg, args, exc=True)


def get(name: str) -> Logger:
    """The logger for a module: ``log = logger.get(__name__)``."""
    return Logger(name)
