"""``podmgr image``: build, inspect and manage App Container images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from podmgr.cli import Ctx, emit, format_option

if TYPE_CHECKING:
    from podmgr.store import Store

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


# -- the store ---------------------------------------------------------------------------


def _store(obj: Ctx) -> Store:
    from podmgr.store import Store

    return Store.open(obj.dir)


@image.command("list")
@click.option("--full", is_flag=True, help="Show full image IDs.")
@format_option
@click.pass_obj
def list_(obj: Ctx, full: bool) -> None:
    """List the images in the store."""
    from podmgr.images import list_images

    with _store(obj) as store:
        emit(list_images(store, full=full))


@image.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="ID|NAME...")
@format_option
@click.pass_obj
def rm(obj: Ctx, refs: tuple[str, ...]) -> None:
    """Remove images (and their rendered trees) that no pod uses."""
    from podmgr.images import remove_images

    with _store(obj) as store:
        emit(remove_images(store, list(refs)))


@image.command("gc")
@click.option(
    "--grace-period",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Keep images and trees used more recently than this (e.g. 24h, 30m, 0).",
)
@format_option
@click.pass_obj
def gc(obj: Ctx, grace_period: str) -> None:
    """Remove images and rendered trees that no pod uses and were not used lately."""
    from podmgr.duration import parse as parse_duration
    from podmgr.images import gc_images

    grace = parse_duration(grace_period)
    with _store(obj) as store:
        emit(gc_images(store, grace))


@image.command("export")
@click.argument("ref", metavar="ID|NAME")
@click.argument("out", metavar="OUT.aci", type=click.Path(path_type=Path, dir_okay=False))
@format_option
@click.pass_obj
def export(obj: Ctx, ref: str, out: Path) -> None:
    """Write an image as an uncompressed tar, whose SHA-512 is its image ID."""
    from podmgr.images import export_image

    with _store(obj) as store:
        emit(export_image(store, ref, out))


def _extract_command(name: str, render: bool, doc: str) -> None:
    @image.command(name, help=doc)
    @click.option("--rootfs-only", is_flag=True, help="Write only the root filesystem into DIR.")
    @click.argument("ref", metavar="ID|NAME")
    @click.argument("dest", metavar="DIR", type=click.Path(path_type=Path, file_okay=False))
    @format_option
    @click.pass_obj
    def command(obj: Ctx, rootfs_only: bool, ref: str, dest: Path) -> None:
        from podmgr.images import extract_image

        with _store(obj) as store:
            emit(extract_image(store, ref, dest, rootfs_only=rootfs_only, render=render))


_extract_command(
    "extract",
    False,
    "Extract one image (without its dependencies) into the new directory DIR.",
)
_extract_command(
    "render",
    True,
    "Render an image with its dependencies into the new directory DIR.",
)


@image.command("cat-manifest")
@click.option("--pretty-print", is_flag=True, help="Indent the JSON.")
@click.argument("ref", metavar="ID|NAME")
@format_option
@click.pass_obj
def cat_manifest(obj: Ctx, pretty_print: bool, ref: str) -> None:
    """Print an image's manifest."""
    from podmgr.images import cat_manifest as cat

    with _store(obj) as store:
        emit(cat(store, ref, pretty=pretty_print))


@image.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@format_option
def validate(files: tuple[Path, ...]) -> None:
    """Check manifests (JSON), image layout directories and image archives."""
    from podmgr.errors import InvalidError
    from podmgr.images import validate_files

    result = validate_files(list(files))
    emit(result)
    if result.failed:
        raise InvalidError(f"{result.failed} of {len(result.files)} files are not valid")
