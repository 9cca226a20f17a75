"""Local images: ``file://`` URLs and plain paths, returned in place (never copied).

Public interface::

    is_local(ref: str) -> bool
    local_path(ref: str) -> Path      # NotFoundError / InvalidError
"""

from __future__ import annotations

import os
from pathlib import Path

from podmgr.errors import InvalidError, NotFoundError


def is_local(ref: str) -> bool:
    """True for ``file:`` URLs, absolute or ``./``-relative paths, and existing files.

    An existing file wins over an app name of the same spelling because a user who
    has ``example.com/app.aci`` in the current directory almost certainly means it.
    """
    if ref.lower().startswith("file:"):
        return True
    if ref.startswith(("/", "./", "../", "~")) or ref in (".", ".."):
        return True
    if "://" in ref:
        return False
    return os.path.isfile(ref)


def local_path(ref: str) -> Path:
    """The path ``ref`` names, which must be an existing regular file."""
    if ref.lower().startswith("file:"):
        import urllib.parse

        parts = urllib.parse.urlsplit(ref)
        # A host other than localhost would be a network share we cannot reach.
        if parts.netloc not in ("", "localhost"):
            raise InvalidError(f"unsupported file URL {ref}: host {parts.netloc!r} is not local")
        if parts.query or parts.fragment:
            raise InvalidError(f"unsupported file URL {ref}: query or fragment not allowed")
        # urllib.request pulls in http.client and ssl: only for file:// URLs.
        from urllib.request import url2pathname

        path = Path(url2pathname(parts.path))
    else:
        path = Path(ref).expanduser()
    if not path.exists():
        raise NotFoundError(f"no such file: {path}")
    if not path.is_file():
        raise InvalidError(f"not a regular file: {path}")
    return path.absolute()
