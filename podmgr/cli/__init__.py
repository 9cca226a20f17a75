"""The click command tree. Commands only parse arguments and render results.

Subcommands are loaded lazily so that ``podmgr --help`` and small commands do not
import the modules (and libraries) that only big commands need.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any

import click

from podmgr import __version__, logger, names
from podmgr.result import OutputFormat, Result, to_json

DEFAULT_DIR = Path(names.STATE_DIR)

_debug = False


def debug_enabled() -> bool:
    return _debug


@dataclasses.dataclass
class Ctx:
    """Global options, available to every command as ``ctx.obj``."""

    dir: Path = DEFAULT_DIR
    debug: bool = False
    format: OutputFormat = OutputFormat.TEXT
    #: D-Bus address of systemd's bus; None means the system bus.
    bus: str | None = None


# name -> (module, attribute, short help). The help lives here so that
# `podmgr --help` need not import every command module.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "version": ("podmgr.cli.version", "version", "Show versions of podmgr, appc and systemd."),
    "image": ("podmgr.cli.image", "image", "Build, inspect and manage App Container images."),
    "trust": ("podmgr.cli.trust", "trust", "Trust, list or remove image signing keys."),
    "fetch": ("podmgr.cli.fetch", "fetch", "Fetch images into the store and print their IDs."),
    "run": ("podmgr.cli.pod", "run", "Run a pod attached; exit with its exit code."),
    "start": ("podmgr.cli.pod", "start", "Start a pod detached and print its UUID."),
    "prepare": ("podmgr.cli.pod", "prepare", "Prepare a pod without starting it."),
    "run-prepared": ("podmgr.cli.pod", "run_prepared", "Run a prepared pod."),
    "status": ("podmgr.cli.pod", "status", "Show a pod's state, apps and exit codes."),
    "list": ("podmgr.cli.pod", "list_", "List pods and their states."),
    "stop": ("podmgr.cli.pod", "stop", "Stop running pods."),
    "rm": ("podmgr.cli.pod", "rm", "Remove exited or prepared pods."),
    "kill": ("podmgr.cli.pod", "kill", "Send a signal to a running pod's apps."),
    "gc": ("podmgr.cli.pod", "gc", "Garbage-collect exited and expired pods."),
    "logs": ("podmgr.cli.pod", "logs", "Show a pod's logs from the journal."),
    "cat-manifest": ("podmgr.cli.pod", "cat_manifest", "Print a pod's reified manifest."),
    "generate": ("podmgr.cli.generate", "generate", "Generate .pod files and units for pods."),
    "enter": ("podmgr.cli.enter", "enter", "Run a command inside a running app, confined."),
    "metadata-service": (
        "podmgr.cli.metadata",
        "metadata_service",
        "Serve the appc metadata service (socket-activated).",
    ),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str, str]], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, attr, _ = self.lazy[name]
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            return cmd
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(n, self.lazy[n][2]) for n in sorted(self.lazy) if not n.startswith("_")]
        rows += [
            (name, cmd.get_short_help_str())
            for name in super().list_commands(ctx)
            if (cmd := super().get_command(ctx, name)) is not None and not cmd.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(sorted(rows))


def format_option(f: Any) -> Any:
    """``--format`` on a data command; overrides the global one."""

    def set_format(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            ctx.find_object(Ctx).format = OutputFormat(value)  # type: ignore[union-attr]

    return click.option(
        "--format",
        type=click.Choice([f.value for f in OutputFormat]),
        default=None,
        expose_value=False,
        callback=set_format,
        help="Output format.",
    )(f)


def emit(result: Result) -> None:
    """Render a result object in the format the user asked for."""
    ctx = click.get_current_context().find_object(Ctx)
    if ctx is not None and ctx.format is OutputFormat.JSON:
        click.echo(to_json(result))
    else:
        text = result.text()
        if text:
            click.echo(text)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--dir",
    "dir_",
    type=click.Path(path_type=Path, file_okay=False),
    default=lambda: os.environ.get(names.DIR_ENV, str(DEFAULT_DIR)),
    show_default=str(DEFAULT_DIR),
    help="State directory (images, pods). Also $PODMGR_DIR.",
)
@click.option("--debug", is_flag=True, help="Log every command and bus call; show tracebacks.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in OutputFormat]),
    default=OutputFormat.TEXT.value,
    help="Output format for commands that print data.",
)
@click.option(
    "--bus",
    envvar=names.BUS_ENV,
    hidden=True,
    help="D-Bus address of systemd's bus (default: the system bus).",
)
# The version from podmgr itself, not importlib.metadata (30 ms); a packaging test checks
# that the two agree.
@click.version_option(version=__version__, message="podmgr %(version)s")
@click.pass_context
def cli(ctx: click.Context, dir_: Path, debug: bool, fmt: str, bus: str | None) -> None:
    """Run App Container pods as transient systemd units."""
    global _debug
    _debug = debug
    if debug:
        logger.set_level(logger.DEBUG)
    ctx.obj = Ctx(dir=dir_, debug=debug, format=OutputFormat(fmt), bus=bus)
