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


#: The host's HMAC-SHA512 key (the metadata service's /pod/hmac/sign) is this long.
KEY_BYTES = 64


def key_path(state: Path) -> Path:
    return metadata_dir(state) / "hmac.key"


def ensure_key(state: Path) -> None:
    """Make the host's HMAC key unless it exists (0600, in a 0700 directory)."""
    path = key_path(state)
    if os.path.exists(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import threading

    tmp = path.with_name(f".hmac.key.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        # link(), unlike rename(), never replaces a key another process made meanwhile.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    from podmgr.fsutil import fsync_dir

    fsync_dir(path.parent)


def register(state: Path, uuid: str, token: str) -> None:
    """Index a pod's token (idempotent)."""
    if not is_token(token):
        raise InvalidError("metadata token is malformed")
    d = tokens_dir(state)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The key is made here, as root, because the service that uses it runs as a user
    # of its own that may only read the state (podmgr-metadata.service).
    ensure_key(state)
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
