"""``podmgr fetch``: fetch images (and their dependencies) into the store."""

from __future__ import annotations

import click

from podmgr.cli import Ctx, emit, format_option

PULL_POLICIES = ("new", "update", "never")


@click.command()
@click.option(
    "--pull-policy",
    type=click.Choice(PULL_POLICIES),
    default="new",
    show_default=True,
    help="new: use the store's copy if any; update: ask the server again (ETag, max-age); "
    "never: use the store only.",
)
@click.option(
    "--insecure-options",
    default="none",
    metavar="LIST",
    help="Comma-separated checks to skip: image (signature), http (allow plain HTTP), "
    "tls (do not verify TLS peers), all.",
)
@click.option(
    "--signature",
    "signatures",
    multiple=True,
    metavar="PATH|URL",
    help="Signature of the image; repeat it to pair one with each IMAGE in order.",
)
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@format_option
@click.pass_obj
def fetch(
    obj: Ctx, pull_policy: str, insecure_options: str, signatures: tuple[str, ...],
    images: tuple[str, ...],
) -> None:  # fmt: skip
    """Fetch images into the store and print their image IDs.

    IMAGE is a file, a file:// or http(s):// URL, an image ID (or unique prefix), or an
    app name name[:version][,label=value...] found by appc discovery. Every image must
    carry a signature by a key trusted for its name (see podmgr trust).
    """
    import sys

    from podmgr.errors import UsageError
    from podmgr.fetch.progress import ProgressBar
    from podmgr.imagefetch import FetchConfig, PullPolicy, fetch, parse_insecure
    from podmgr.store import Store

    if len(signatures) > len(images):
        raise UsageError(
            f"{len(signatures)} --signature options for {len(images)} images",
            hint="give at most one --signature per IMAGE, in the same order",
        )
    config = FetchConfig(
        pull_policy=PullPolicy(pull_policy),
        insecure=parse_insecure(insecure_options),
        signatures=dict(zip(images, signatures, strict=False)),
        progress=lambda label: ProgressBar(sys.stderr, label),
    )
    with Store.open(obj.dir) as store:
        emit(fetch(list(images), store=store, options=config))
