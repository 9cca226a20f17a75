"""``podmgr image``: build, inspect and manage App Container images."""

from __future__ import annotations

from pathlib import Path

import click

from podmgr.cli import emit, format_option

# Spelled out rather than imported from podmgr.aci, so that `podmgr image --help` does
# not load the archive code; test_aci_cli checks the two lists agree.
COMPRESSIONS = ("none", "gzip", "bzip2", "xz", "zstd")


@click.group()
def image() -> None:
    """Build, inspect and manage App Container images."""


@image.command("build")
@click.option(
    "--compression",
    type=click.Choice(COMPRESSIONS),
    default="gzip",
    show_default=True,
    help="Compression of the written archive.",
)
@click.option(
    "--keep-mtimes",
    is_flag=True,
    help="Keep file mtimes (the image ID then depends on them); by default they are "
    "normalized so that the same directory always gives the same image ID.",
)
@click.argument("layout", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
@click.argument("out", metavar="OUT.aci", type=click.Path(path_type=Path, dir_okay=False))
@format_option
def build(compression: str, keep_mtimes: bool, layout: Path, out: Path) -> None:
    """Build the image archive OUT.aci from an image layout DIR (manifest + rootfs/).

    The build is reproducible; it prints the image ID. OUT.aci is replaced if it exists.
    """
    from podmgr import aci

    emit(aci.build(layout, out, aci.Compression(compression), keep_mtimes=keep_mtimes))
