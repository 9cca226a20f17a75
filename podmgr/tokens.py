"""The metadata service's token index: each pod's token, a symlink to its UUID.

Apart from :mod:`podmgr.metadata` (the service), since every prepare writes here: a
template's clone (``podmgr run`` of a command line seen before) imports only this.
"""

from __future__ import annotations

import binascii
import contextlib
import os
from pathlib import Path

from podmgr.errors import InvalidError

_URLSAFE = str.maketrans("+/", "-_")


def is_token(text: str) -> bool:
    """Whether ``text`` is :func:`new_token` output, or any URL-safe token of at least
    128 bits: 22 to 128 of ``[A-Za-z0-9_-]``. (Not a regular expression: compiling one
    costs every ``podmgr run`` 0.7 ms.)"""
    if not (22 <= len(text) <= 128 and text.isascii()):
        return False
    rest = text.replace("-", "").replace("_", "")
    return not rest or rest.isalnum()


def new_token() -> str:
    """A pod's metadata token: ``secrets.token_urlsafe(24)`` (192 bits), without
    importing secrets, and with it OpenSSL's hashlib, on the start-up path."""
    # binascii (which jeepney loads anyway), not base64 and its imports.
    text = binascii.b2a_base64(os.urandom(24), newline=False).decode()
    return text.translate(_URLSAFE).rstrip("=")


def metadata_dir(state: Path) -> Path:
    return state / "metadata"


def tokens_dir(state: Path) -> Path:
    return metadata_dir(state) / "tokens"


def register(state: Path, uuid: str, token: str) -> None:
    """Index a pod's token (idempotent)."""
    if not is_token(token):
        raise InvalidError("metadata token is malformed")
    d = tokens_dir(state)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    link = d / token
    try:
        os.symlink(uuid, link)
    except FileExistsError:
        if os.readlink(link) != uuid:
            raise InvalidError("metadata token already in use") from None


def unregister(state: Path, token: str) -> None:
    if is_token(token):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tokens_dir(state) / token)
