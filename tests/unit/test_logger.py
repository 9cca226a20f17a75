"""podmgr.logger: logging is imported only for a record that is emitted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from podmgr import logger


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_records_below_the_level_do_not_import_logging() -> None:
    p = python(
        "import sys\n"
        "from podmgr import logger\n"
        "log = logger.get('podmgr.x')\n"
        "log.debug('quiet %s', 1); log.info('quiet too')\n"
        "assert 'logging' not in sys.modules, 'imported'\n"
        "log.warning('loud %s', 2)\n"
        "assert 'logging' in sys.modules\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == "podmgr: WARNING: loud 2\n"


def test_debug_level_emits_debug_records() -> None:
    p = python(
        "from podmgr import logger\n"
        "logger.set_level(logger.DEBUG)\n"
        "logger.get('podmgr.x').debug('+ %s', 'cmd')\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == "podmgr: DEBUG: + cmd\n"


def test_exception_carries_the_traceback() -> None:
    p = python(
        "from podmgr import logger\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    logger.get('podmgr.x').exception('traceback')\n"
    )
    assert "podmgr: ERROR: traceback" in p.stderr and "ValueError: boom" in p.stderr


def test_once_logging_is_loaded_it_decides(caplog: pytest.LogCaptureFixture) -> None:
    log = logger.get("podmgr.test_logger")
    with caplog.at_level(logger.DEBUG, logger="podmgr.test_logger"):
        log.debug("seen %s", "here")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("podmgr.test_logger", "DEBUG", "seen here")
    ]
    # The record names its caller, as logging's own loggers do.
    assert caplog.records[0].funcName == "test_once_logging_is_loaded_it_decides"
