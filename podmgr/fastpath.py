"""``podmgr run`` and ``podmgr start`` of a command line seen before, without click.

Importing click and podmgr's command tree costs 35-45 ms (``bench/cli_startup``), more
than a third of what the whole of ``podmgr run`` may take (``bench/pod_start``). Yet a
pod prepared from a template (:mod:`podmgr.podtemplate`) needs nothing that click's
parse produces beyond the template's inputs. So when click's ``run`` or ``start`` has
prepared a pod from a template, or kept one, it records that parse (:func:`remember`)
under the exact command line: the arguments after the command, the state directory, the
working directory and the environment click reads. The next identical command line
(:func:`main`, called by ``podmgr.__main__`` before click is imported) looks the record
up, looks its images up in the store again and clones the template the full path would
take, then starts the pod as click's command would. Anything else (another command line,
a changed store, a template gone) falls through to click, which has the last word.

Only command lines whose parse depends on nothing but their text are recorded: no
``--set-env-file`` (a file's contents), ``--pod-manifest``, ``--uuid-file-save`` or
``--interactive``, and no global option but ``--dir``. Records live in the state
directory's template directory (root's alone, mode 0700), at most :data:`KEEP` of them.

This module is part of the CLI: it renders what the commands print.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podmgr import logger, names

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

log = logger.get(__name__)

#: The record format; another one is a miss.
VERSION = 2
#: The commands taken here.
COMMANDS = ("run", "start")
#: Records kept per state directory (least recently used go).
KEEP = 32
#: The command line click parses (set by ``podmgr.__main__``), for :func:`remember`.
ARGV: list[str] | None = None


def _split(argv: Sequence[str]) -> tuple[str, str, list[str]] | None:
    """``[--dir D] COMMAND ARGS…`` as (command, state directory, ARGS), or None."""
    state = os.environ.get(names.DIR_ENV, names.STATE_DIR)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "--dir" and i + 1 < len(argv):
            state, i = argv[i + 1], i + 2
        elif argv[i].startswith("--dir="):
            state, i = argv[i].removeprefix("--dir="), i + 1
        else:
            return None
    if i == len(argv) or argv[i] not in COMMANDS:
        return None
    return argv[i], state, list(argv[i + 1 :])


def _lookup(argv: Sequence[str]) -> tuple[str, Path, Path, str] | None:
    """(command, state directory, record path, record text) for a command line."""
    split = _split(argv)
    if split is None:
        return None
    command, state, args = split
    import json

    try:
        cwd = os.getcwd()
    except OSError:
        return None
    text = json.dumps(
        {
            "version": VERSION,
            "command": command,
            "args": args,
            "state": os.path.abspath(state),
            "cwd": cwd,
            # What click reads from the environment for these commands (besides the
            # state directory, in "state").
            "env": {names.BUS_ENV: os.environ.get(names.BUS_ENV)},
        },
        sort_keys=True,
    )
    from podmgr.podtemplate import checksum, templates_dir

    path = templates_dir(Path(state)) / ".argv" / f"{checksum(text)}.json"
    return command, Path(state), path, text


def remember(argv: Sequence[str] | None, command: str, source: Any) -> None:
    """Record that ``argv`` is the ``command`` whose template inputs are ``source`` (a
    :class:`podmgr.podtemplate.Source`); click's run and start call this."""
    if argv is None or source is None:
        return
    found = _lookup(argv)
    if found is None or found[0] != command:
        return
    import json

    _, _, path, text = found
    doc = {"argv": text, "spec": source.spec, "lookups": source.lookups}
    from podmgr.fsutil import atomic_write

    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(path, json.dumps(doc), mode=0o600)
        records = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in records[:-KEEP]:
            old.unlink(missing_ok=True)
    except OSError as e:
        log.debug("command line not recorded: %s", e)


def main(argv: Sequence[str]) -> int | None:
    """Run ``argv`` if it is a recorded command line whose template still holds: the
    exit code; None to let click take it (nothing is left behind then)."""
    found = _lookup(argv)
    if found is None:
        return None
    command, state, path, text = found
    import json

    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("argv") != text or "lookups" not in doc:
        return None
    from podmgr import podtemplate

    if os.geteuid() != 0:
        return None  # click's path says what is wrong
    source = podtemplate.Source(doc["spec"], doc["lookups"])
    prepared = podtemplate.prepare_again(state, source)
    if prepared is None:
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used
    log.debug("pod %s: command line seen before (%s)", prepared.uuid, path.name)
    bus = os.environ.get(names.BUS_ENV)
    if command == "run":
        from podmgr import launch

        return launch.run_attached(
            state, prepared.uuid, bus=bus, emit=emitter(len(prepared.apps) > 1)
        )
    start(state, prepared.uuid, bus)
    print(prepared.uuid)
    return 0


def start(state: Path, uuid: str, bus: str | None) -> None:
    """Start a new pod; should that fail, remove it (``podmgr start``)."""
    from podmgr import launch

    try:
        launch.start(state, uuid, bus=bus)
    except BaseException:
        from podmgr import podctl

        podctl.remove(state, uuid, bus=bus)
        raise


def emitter(multi: bool, *, timestamps: bool = False) -> Callable[[Any], None]:
    """How ``run`` and ``logs`` print journal entries: prefixed with the app's name when
    ``multi`` (entries of several apps), and before that with the entry's journal time
    when ``timestamps`` (``logs --timestamps``)."""
    if timestamps:
        from podmgr.journal import timestamp

    def out(e: Any) -> None:
        line = f"{e.app} | {e.message}" if multi else e.message
        if timestamps:
            line = f"{timestamp(e.time_usec)} {line}"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    return out
