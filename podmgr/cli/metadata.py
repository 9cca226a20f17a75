"""``podmgr metadata-service``: the appc metadata service (socket-activated)."""

from __future__ import annotations

import click

from podmgr.cli import Ctx
from podmgr.metadata import IDLE_EXIT


@click.command("metadata-service")
@click.option(
    "--listen",
    metavar="ADDR:PORT",
    multiple=True,
    help="Listen here too (for tests and manual runs); by default only on the sockets "
    "systemd passes (podmgr-metadata.socket).",
)
@click.option(
    "--idle-exit",
    default=IDLE_EXIT,
    show_default=True,
    metavar="DURATION",
    help="When socket-activated, exit after this long without a request (0: never); "
    "the socket starts the service again on the next request, and the next pod's start "
    "waits for it.",
)
@click.pass_obj
def metadata_service(ctx: Ctx, listen: tuple[str, ...], idle_exit: str) -> None:
    """Serve the appc metadata service (pod and app metadata, HMAC identity)."""
    from podmgr import duration, metadata

    def ready(addresses: list[tuple[str, int]]) -> None:
        for host, port in addresses:
            click.echo(f"listening on {host}:{port}")

    metadata.serve(
        ctx.dir,
        listen=listen,
        idle_exit=duration.parse(idle_exit),
        on_ready=ready,
    )
