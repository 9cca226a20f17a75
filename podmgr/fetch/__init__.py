"""Fetching images and their signatures: one module per transport.

- ``podmgr.fetch.http`` — ``download()`` a URL to a file (TLS, redirects, proxies,
  conditional requests, ``Range`` resumption, timeouts) and ``get()`` a small document.
- ``podmgr.fetch.file`` — ``file://`` URLs and plain paths (no copy).
- ``podmgr.fetch.discovery`` — appc meta discovery: app string → image/signature/key URLs.
- ``podmgr.fetch.progress`` — ``ProgressBar``, a progress callback the CLI passes in.

This package module imports nothing heavy so that ``ref_kind`` and the fetch options
(:class:`FetchConfig`, re-exported by :mod:`podmgr.imagefetch`) are cheap on the CLI path.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

from podmgr.errors import UsageError

if TYPE_CHECKING:
    from podmgr.fetch.http import FetchOptions
    from podmgr.trust import TrustStore

RefKind = Literal["file", "url", "name"]


def ref_kind(ref: str) -> RefKind:
    """Which fetcher handles ``ref``: a local file, a URL, or an app name for discovery.

    ``file://…``, absolute paths, ``./…``/``../…`` and existing files are local;
    ``http://`` and ``https://`` are URLs; anything else is an app string.
    """
    from podmgr.fetch.file import is_local

    if is_local(ref):
        return "file"
    scheme, sep, _ = ref.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        return "url"
    return "name"


class PullPolicy(enum.StrEnum):
    NEW = "new"
    UPDATE = "update"
    NEVER = "never"


class Insecure(enum.StrEnum):
    IMAGE = "image"
    HTTP = "http"
    TLS = "tls"
    ALL = "all"


def parse_insecure(value: str | Iterable[str]) -> frozenset[Insecure]:
    """``"http,tls"`` → {HTTP, TLS}; ``all`` means every one; ``none`` or "" nothing."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: set[Insecure] = set()
    for item in (i.strip().lower() for i in items):
        if item in ("", "none"):
            continue
        try:
            out.add(Insecure(item))
        except ValueError:
            known = ", ".join(i.value for i in Insecure)
            raise UsageError(
                f"unknown --insecure-options value {item!r}", hint=f"use one or more of: {known}"
            ) from None
    if Insecure.ALL in out:
        out.update(Insecure)
    return frozenset(out)


class Progress(Protocol):
    def __call__(self, done: int, total: int | None) -> None: ...

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class FetchConfig:
    pull_policy: PullPolicy = PullPolicy.NEW
    insecure: frozenset[Insecure] = frozenset()
    #: ref -> signature path or URL, for the references given by the user.
    signatures: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: None: :func:`podmgr.trust.default_store` (honours ``$PODMGR_TRUST_DIR``).
    trust: TrustStore | None = None
    #: label -> a progress callback (the CLI draws a bar on a terminal).
    progress: Callable[[str], Progress] | None = None
    #: Timeouts etc.; allow_http/insecure_tls are set from ``insecure``.
    http: FetchOptions | None = None

    def fetch_options(self) -> FetchOptions:
        from podmgr.fetch.http import FetchOptions

        base = self.http or FetchOptions()
        return dataclasses.replace(
            base,
            allow_http=base.allow_http or Insecure.HTTP in self.insecure,
            insecure_tls=base.insecure_tls or Insecure.TLS in self.insecure,
        )
