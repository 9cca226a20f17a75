"""``podmgr version``."""

from __future__ import annotations

import click

from podmgr.cli import Ctx, emit, format_option


@click.command()
@format_option
@click.pass_obj
def version(ctx: Ctx) -> None:
    """Show versions of podmgr, the appc spec and the systemd it talks to."""
    from podmgr.info import versions

    emit(versions(ctx.bus))
