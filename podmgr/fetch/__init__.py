"""Fetching images and their signatures: one module per transport.

- ``podmgr.fetch.http`` — ``download()`` a URL to a file (TLS, redirects, proxies,
  conditional requests, ``Range`` resumption, timeouts) and ``get()`` a small document.
- ``podmgr.fetch.file`` — ``file://`` URLs and plain paths (no copy).
- ``podmgr.fetch.discovery`` — appc meta discovery: app string → image/signature/key URLs.
- ``podmgr.fetch.progress`` — ``ProgressBar``, a progress callback the CLI passes in.

This package module imports nothing heavy so that ``ref_kind`` is cheap on the CLI path.
"""

from __future__ import annotations

from typing import Literal

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
