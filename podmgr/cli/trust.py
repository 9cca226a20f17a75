"""``podmgr trust``: manage the keys trusted to sign images.

``podmgr trust [--prefix PREFIX | --root] KEY…`` is rkt's syntax and is kept as an alias
of ``podmgr trust add``: any first argument that is not a subcommand name is handed to
``add``. A key file literally named ``list`` or ``rm`` needs ``podmgr trust add list``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from podmgr.cli import emit, format_option

if TYPE_CHECKING:
    from podmgr.trust import KeyInfo, TrustStore

_ADMIN_DEFAULT = "/etc/podmgr/trustedkeys"
_VENDOR_DEFAULT = "/usr/lib/podmgr/trustedkeys"


class _TrustGroup(click.Group):
    """A group whose first argument, unless a subcommand or help, means ``add``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["add", *args]
        return super().parse_args(ctx, args)


def _store_options(f: Callable[..., Any]) -> Callable[..., Any]:
    # Hidden: tests and packagers point podmgr at other roots; users never need to.
    f = click.option(
        "--vendor-trust-dir",
        envvar="PODMGR_VENDOR_TRUST_DIR",
        default=_VENDOR_DEFAULT,
        hidden=True,
        type=click.Path(path_type=Path, file_okay=False),
    )(f)
    return click.option(
        "--trust-dir",
        envvar="PODMGR_TRUST_DIR",
        default=_ADMIN_DEFAULT,
        hidden=True,
        type=click.Path(path_type=Path, file_okay=False),
    )(f)


def _store(trust_dir: Path, vendor_trust_dir: Path) -> TrustStore:
    from podmgr.trust import TrustStore

    return TrustStore(trust_dir, vendor_trust_dir)


@click.group(cls=_TrustGroup)
def trust() -> None:
    """Trust keys to sign images (podmgr trust [--prefix P | --root] KEY…), list or remove them.

    Images are verified against keys trusted for every name (--root) or for a name
    prefix (--prefix example.com/app covers example.com/app and example.com/app/…).
    """


@trust.command("add")
@click.option("--prefix", metavar="PREFIX", help="Trust the keys for image names under PREFIX.")
@click.option("--root", is_flag=True, help="Trust the keys for every image name.")
@click.option(
    "--skip-fingerprint-review",
    is_flag=True,
    help="Trust without showing the keys and asking (needed when not on a terminal).",
)
@click.option("--insecure-allow-http", is_flag=True, help="Allow fetching keys over plain HTTP.")
@click.argument("keys", nargs=-1, metavar="[KEY_FILE_OR_URL]...")
@_store_options
@format_option
def add(
    prefix: str | None,
    root: bool,
    skip_fingerprint_review: bool,
    insecure_allow_http: bool,
    keys: tuple[str, ...],
    trust_dir: Path,
    vendor_trust_dir: Path,
) -> None:
    """Trust public keys for a prefix or for every image.

    With no KEY, the keys are discovered through ac-discovery-pubkeys for PREFIX.
    """
    from podmgr.errors import PodmgrError, UsageError
    from podmgr.trust import TrustChange, inspect_keys, load_key_source, normalize_prefix

    if root == (prefix is not None):
        raise UsageError("give exactly one of --prefix PREFIX and --root")
    if prefix is not None:
        prefix = normalize_prefix(prefix)
    sources = list(keys) or _discover(prefix, insecure_allow_http)
    if not skip_fingerprint_review and not _interactive():
        raise UsageError(
            "refusing to trust keys without a fingerprint review: stdin is not a terminal",
            hint="check the fingerprints out of band and pass --skip-fingerprint-review",
        )
    store = _store(trust_dir, vendor_trust_dir)
    change = TrustChange()
    declined = []
    for source in sources:
        data = load_key_source(source, allow_http=insecure_allow_http)
        for info, armored in inspect_keys(data):
            if not skip_fingerprint_review and not _review(source, info, prefix):
                declined.append(info.fingerprint)
                continue
            change.added.append(store.add_armored(info, armored, prefix))
    emit(change)
    if declined:
        raise PodmgrError(f"not trusted (declined): {', '.join(declined)}")


def _interactive() -> bool:
    return sys.stdin.isatty()


def _discover(prefix: str | None, allow_http: bool) -> list[str]:
    from podmgr.errors import PodmgrError, UsageError

    if prefix is None:
        raise UsageError("give a KEY_FILE_OR_URL (discovery needs --prefix)")
    from podmgr.fetch.discovery import discover_pubkeys
    from podmgr.fetch.http import FetchOptions

    urls = discover_pubkeys(prefix, FetchOptions(allow_http=allow_http))
    if not urls:
        raise PodmgrError(
            f"no ac-discovery-pubkeys found for {prefix}",
            hint=f"give the key explicitly: podmgr trust --prefix {prefix} KEY_FILE_OR_URL",
        )
    return urls


def _review(source: str, info: KeyInfo, prefix: str | None) -> bool:
    from podmgr.trust import key_age

    def grouped(fpr: str) -> str:
        return " ".join(fpr[i : i + 4] for i in range(0, len(fpr), 4))

    echo = click.echo
    echo(f"Prefix: {prefix if prefix is not None else '(root: every image)'}", err=True)
    echo(f"Key: {source}", err=True)
    echo(f"GPG key fingerprint is: {grouped(info.fingerprint)}", err=True)
    for sub in info.subkeys:
        echo(f"    Subkey fingerprint: {grouped(sub)}", err=True)
    for uid in info.uids:
        echo(f"    {uid}", err=True)
    echo(f"    {info.algorithm}, {key_age(info)}", err=True)
    return click.confirm("Are you sure you want to trust this key?", err=True)


@trust.command("list")
@_store_options
@format_option
def list_(trust_dir: Path, vendor_trust_dir: Path) -> None:
    """List trusted keys with their prefix and user IDs."""
    emit(_store(trust_dir, vendor_trust_dir).list())


@trust.command("rm")
@click.argument("fingerprint")
@_store_options
@format_option
def rm(fingerprint: str, trust_dir: Path, vendor_trust_dir: Path) -> None:
    """Stop trusting a key (a vendor key is masked by an empty file in /etc)."""
    emit(_store(trust_dir, vendor_trust_dir).remove(fingerprint))
