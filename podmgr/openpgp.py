"""OpenPGP plumbing for podmgr.trust: ASCII armour, a private GnuPG home, key inspection.

Only ``gpg``/``gpgv`` understand keys and signatures; this module decodes armour (so a
verification needs no ``gpg --dearmor`` per key) and parses ``--with-colons`` output.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from podmgr.errors import InvalidError
from podmgr.process import run

#: A key URL is a small file; refuse anything bigger rather than filling memory.
MAX_KEY_SIZE = 1 << 20
FINGERPRINT_RE = re.compile(r"^[0-9A-F]{40}$")
_ARMOR = re.compile(
    rb"-----BEGIN PGP (?P<label>[A-Z ,0-9]+)-----\r?\n"
    rb"(?P<headers>(?:[^\r\n]+\r?\n)*?)\r?\n?"
    rb"(?P<body>(?:[A-Za-z0-9+/=]+\r?\n)*?)"
    rb"(?:=(?P<crc>[A-Za-z0-9+/]{4})\r?\n)?"
    rb"-----END PGP (?P=label)-----"
)


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """What ``gpg --show-keys`` tells about a single public key."""

    fingerprint: str
    uids: list[str]
    #: Fingerprints of subkeys.
    subkeys: list[str]
    #: GnuPG validity letter of the primary key: ``r`` revoked, ``e`` expired, …
    validity: str
    #: Seconds since the epoch, or None for no expiry.
    expires: int | None
    algorithm: str


# ---------------------------------------------------------------------------
# ASCII armour


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(text: bytes, label: str) -> list[bytes]:
    """Decode every ``-----BEGIN PGP <label>-----`` block in ``text``.

    Raises InvalidError when there is none or one is damaged (bad base64 or checksum).
    Decoding in Python spares a ``gpg --dearmor`` process per key on every verification.
    """
    blocks = []
    for m in _ARMOR.finditer(text):
        if m.group("label").decode() != label:
            continue
        try:
            body = base64.b64decode(b"".join(m.group("body").split()), validate=True)
            crc = m.group("crc")
            if crc is not None:
                want = int.from_bytes(base64.b64decode(crc, validate=True), "big")
                if _crc24(body) != want:
                    raise ValueError("checksum mismatch")
        except ValueError as e:
            raise InvalidError(f"damaged ASCII armour in PGP {label}: {e}") from e
        if not body:
            raise InvalidError(f"empty PGP {label}")
        blocks.append(body)
    if not blocks:
        raise InvalidError(f"no ASCII-armoured PGP {label} found")
    return blocks


# ---------------------------------------------------------------------------
# GnuPG


@dataclasses.dataclass
class _Gpg:
    """gpg in a temporary home, so that no user or system keyring is ever consulted."""

    home: Path

    def __call__(self, *args: str | os.PathLike[str], check: bool = True) -> Any:
        return run(
            [
                "gpg",
                "--homedir",
                self.home,
                "--batch",
                "--no-tty",
                "--no-autostart",
                "--no-options",
                "--with-colons",
                "--fixed-list-mode",
                *args,
            ],
            check=check,
        )


class GnupgHome:
    """A private, throw-away GNUPGHOME (and scratch directory)."""

    def __enter__(self) -> _Gpg:
        self._tmp = tempfile.TemporaryDirectory(prefix="podmgr-gpg-")
        home = Path(self._tmp.name)
        home.chmod(0o700)
        return _Gpg(home)

    def __exit__(self, *exc: object) -> None:
        self._tmp.cleanup()


def _unescape_colons(field: str) -> str:
    # --with-colons escapes ':' and control characters as \xNN.
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), field)


def parse_colons(colons: str) -> list[KeyInfo]:
    """Keys from ``gpg --with-colons`` listing output, in order."""
    keys: list[KeyInfo] = []
    cur: dict[str, Any] | None = None
    last = ""

    def flush() -> None:
        if cur is not None:
            keys.append(KeyInfo(**cur))

    for line in colons.splitlines():
        f = line.split(":")
        rec = f[0]
        if rec in ("pub", "sec"):
            flush()
            cur = {
                "fingerprint": "",
                "uids": [],
                "subkeys": [],
                "validity": f[1],
                "expires": int(f[6]) if len(f) > 6 and f[6] else None,
                "algorithm": (f[16] if len(f) > 16 and f[16] else f"algo{f[3]}")
                if rec == "pub"
                else "secret",
            }
            if rec == "sec":
                cur["validity"] = "sec"
        elif rec == "fpr" and cur is not None:
            if last in ("pub", "sec"):
                cur["fingerprint"] = f[9]
            elif last in ("sub", "ssb"):
                cur["subkeys"].append(f[9])
        elif rec == "uid" and cur is not None:
            cur["uids"].append(_unescape_colons(f[9]))
        if rec in ("pub", "sec", "sub", "ssb", "uid"):
            last = rec
    flush()
    return keys


def inspect_key(data: bytes) -> tuple[KeyInfo, str]:
    """Validate a single public key (armoured or binary); return it and its armoured form.

    This is what a store file must hold: exactly one primary public key.
    """
    found = inspect_keys(data)
    if len(found) != 1:
        raise InvalidError(
            f"the key file holds {len(found)} keys; exactly one is needed: "
            + ", ".join(k.fingerprint for k, _ in found),
            hint="export one key per file (gpg --armor --export FINGERPRINT)",
        )
    return found[0]


def inspect_keys(data: bytes) -> list[tuple[KeyInfo, str]]:
    """Validate a set of public keys (as an ac-discovery-pubkeys URL may serve).

    No secret keys, no revoked or expired keys. Each armoured form is gpg's re-export of
    one key, which drops anything gpg would not import (stray packets, subkeys without a
    valid binding signature).
    """
    if len(data) > MAX_KEY_SIZE:
        raise InvalidError(f"key file too large ({len(data)} bytes)")
    with GnupgHome() as gpg:
        src = gpg.home / "key"
        src.write_bytes(data)
        keys = parse_colons(gpg("--show-keys", src, check=False).stdout)
        if any(k.validity == "sec" for k in keys):
            raise InvalidError(
                "the key file holds a secret key", hint="give the public key only (gpg --export)"
            )
        if not keys:
            raise InvalidError("no OpenPGP public key found in the key file")
        for key in keys:
            if not FINGERPRINT_RE.match(key.fingerprint):
                raise InvalidError(f"unsupported key (fingerprint {key.fingerprint!r} is not v4)")
            if key.validity == "r":
                raise InvalidError(f"key {key.fingerprint} is revoked")
            if key.validity == "e":
                raise InvalidError(f"key {key.fingerprint} has expired")
        if len(keys) == 1:
            exports = [gpg("--armor", "--import-options", "import-export", "--import", src).stdout]
        else:
            gpg("--import", src)
            exports = [gpg("--armor", "--export", k.fingerprint).stdout for k in keys]
    for key, armored in zip(keys, exports, strict=True):
        if "BEGIN PGP PUBLIC KEY BLOCK" not in armored:
            raise InvalidError(f"gpg could not export key {key.fingerprint}")
    return list(zip(keys, exports, strict=True))


def key_age(info: KeyInfo) -> str:
    """A short description of a key's expiry for the review prompt."""
    if info.expires is None:
        return "does not expire"
    left = info.expires - time.time()
    when = time.strftime("%Y-%m-%d", time.gmtime(info.expires))
    return f"expires {when}" if left > 0 else f"expired {when}"
