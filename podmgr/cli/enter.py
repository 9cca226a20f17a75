"""``podmgr enter [--app NAME] UUID [CMD [ARG…]]``."""

from __future__ import annotations

import click

from podmgr.cli import Ctx


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--app", help="The app to enter (needed when the pod has several).")
@click.argument("uuid")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def enter(ctx: Ctx, app: str | None, uuid: str, command: tuple[str, ...]) -> int:
    """Run COMMAND (default: the app's bash or sh) inside a running app, with the app's
    user, root, namespaces, capabilities and seccomp filter, in the pod's slice; this
    terminal is its stdin, stdout and stderr. Exits with the command's exit code."""
    from podmgr import enter as enter_mod
    from podmgr import podstate

    argv = list(command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    return enter_mod.enter(ctx.dir, podstate.find(ctx.dir, uuid), argv, app=app, bus=ctx.bus)
