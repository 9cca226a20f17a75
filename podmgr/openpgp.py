"""OpenPGP plumbing for podmgr.trust: ASCII armour, a private GnuPG home, key inspection.

Only ``gpg`` and ``sqv`` judge keys and signatures. This module decodes armour (so a
verification needs no ``gpg --dearmor`` per key), parses ``--with-colons`` output, and
reads the few fields of a signature packet that name its type and its issuer
(:func:`parse_signatures`): what the packet claims, used to refuse a malformed
signature before any image byte and to explain a refusal, never to accept one.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from podmgr.errors import InvalidError
from podmgr.process import run

#: A key URL is a small file; refuse anything bigger rather than filling memory.
MAX_KEY_SIZE = 1 << 20
FINGERPRINT_RE = re.compile(r"^[0-9A-F]{40}\Z")
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
    #: Subkey fingerprint -> its GnuPG validity letter (``r`` revoked, ``e`` expired, …).
    subkey_validity: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SignatureInfo:
    """What a signature packet says of itself: unverified claims, read before verifying."""

    version: int
    #: 0x00: over a binary document (the file's bytes); 0x01: over canonical text.
    sig_type: int
    #: From the issuer fingerprint subpacket, if the signature has one.
    issuer_fingerprint: str | None
    #: The issuer's 64-bit key ID (issuer subpacket, or a v3 signature's), if given.
    issuer_key_id: str | None

    @property
    def issuer(self) -> str | None:
        """The issuer as precisely as the signature names it."""
        return self.issuer_fingerprint or self.issuer_key_id

    def issued_by(self, fingerprint: str) -> bool:
        """Whether the signature names the (primary or sub)key ``fingerprint`` as issuer."""
        if self.issuer_fingerprint is not None:
            return self.issuer_fingerprint == fingerprint
        return self.issuer_key_id is not None and fingerprint.endswith(self.issuer_key_id)


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
# Signature packets (RFC 9580 section 4.2 and 5.2)

_SIGNATURE_TAG = 2
_MARKER_TAG = 10
_SUBPACKET_ISSUER = 16
_SUBPACKET_ISSUER_FINGERPRINT = 33


def _length(data: bytes, i: int, n: int) -> int:
    """The ``n``-octet big-endian number at ``data[i:]``."""
    if i + n > len(data):
        raise InvalidError("truncated OpenPGP packet")
    return int.from_bytes(data[i : i + n], "big")


def _packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(tag, body) of each packet in binary OpenPGP data."""
    i = 0
    while i < len(data):
        ctb = data[i]
        i += 1
        if not ctb & 0x80:
            raise InvalidError("not OpenPGP data (bad packet header)")
        if ctb & 0x40:  # new format
            tag = ctb & 0x3F
            o1 = _length(data, i, 1)
            if o1 < 192:
                n, i = o1, i + 1
            elif o1 < 224:
                n, i = ((o1 - 192) << 8) + _length(data, i + 1, 1) + 192, i + 2
            elif o1 == 255:
                n, i = _length(data, i + 1, 4), i + 5
            else:
                raise InvalidError("a partial-length packet where a signature belongs")
        else:  # old format
            tag, kind = (ctb >> 2) & 0x0F, ctb & 3
            if kind == 3:  # indeterminate: to the end
                n = len(data) - i
            else:
                size = 1 << kind
                n, i = _length(data, i, size), i + size
        if i + n > len(data):
            raise InvalidError("truncated OpenPGP packet")
        yield tag, data[i : i + n]
        i += n


def key_fingerprints(armored: bytes) -> set[str] | None:
    """The v4 fingerprints of every primary key and subkey in an armoured key file, or
    None when it holds another version's key or does not parse (ask gpg then).

    Only to refuse early a signature whose issuer no trusted key has (see
    :func:`podmgr.trust.screen`): sqv still judges every signature that gets past it.
    """
    import hashlib

    out = set()
    try:
        for block in dearmor(armored, "PUBLIC KEY BLOCK"):
            for tag, body in _packets(block):
                if tag not in (6, 14):  # public key, public subkey
                    continue
                if not body or body[0] != 4 or len(body) > 0xFFFF:
                    return None
                head = b"\x99" + len(body).to_bytes(2, "big")
                out.add(hashlib.sha1(head + body, usedforsecurity=False).hexdigest().upper())
    except InvalidError:
        return None
    return out


def _subpackets(area: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, body) of each signature subpacket in a hashed or unhashed area."""
    i = 0
    while i < len(area):
        o1 = area[i]
        if o1 < 192:
            n, i = o1, i + 1
        elif o1 < 255:
            n, i = ((o1 - 192) << 8) + _length(area, i + 1, 1) + 192, i + 2
        else:
            n, i = _length(area, i + 1, 4), i + 5
        if n == 0 or i + n > len(area):
            raise InvalidError("damaged signature subpacket")
        yield area[i] & 0x7F, area[i + 1 : i + n]
        i += n


def _signature(body: bytes) -> SignatureInfo:
    version = body[0] if body else 0
    if version == 3:
        # version, 5, type, creation time (4), key ID (8), algorithms, hash prefix, MPIs
        if len(body) < 19 or body[1] != 5:
            raise InvalidError("damaged v3 signature packet")
        return SignatureInfo(3, body[2], None, body[7:15].hex().upper())
    if version not in (4, 6):
        raise InvalidError(f"unsupported signature packet version {version}")
    # version, type, public-key algorithm, hash algorithm, hashed area, unhashed area
    width = 4 if version == 6 else 2
    i = 4
    fingerprint = key_id = None
    for _ in range(2):
        n = _length(body, i, width)
        area = body[i + width : i + width + n]
        if len(area) != n:
            raise InvalidError("truncated signature packet")
        i += width + n
        for kind, value in _subpackets(area):
            if kind == _SUBPACKET_ISSUER_FINGERPRINT and len(value) in (21, 33):
                fingerprint = fingerprint or value[1:].hex().upper()
            elif kind == _SUBPACKET_ISSUER and len(value) == 8:
                key_id = key_id or value.hex().upper()
    return SignatureInfo(version, body[1], fingerprint, key_id)


def parse_signatures(data: bytes) -> list[SignatureInfo]:
    """The signature packets of a (dearmoured) detached signature.

    Raises InvalidError if the data is not a sequence of OpenPGP packets, holds any
    packet but signatures (and the obsolete marker packet), or no signature.
    """
    found = []
    for tag, body in _packets(data):
        if tag == _SIGNATURE_TAG:
            found.append(_signature(body))
        elif tag != _MARKER_TAG:
            raise InvalidError(
                f"not a detached signature: it holds an OpenPGP packet of type {tag}"
            )
    if not found:
        raise InvalidError("no OpenPGP signature packet found")
    return found


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


#: What GnupgHome gives: call it with gpg's arguments; ``.home`` is the directory.
Gpg = _Gpg


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
    last = sub_validity = ""

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
                "subkey_validity": {},
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
                cur["subkey_validity"][f[9]] = sub_validity
        elif rec == "uid" and cur is not None:
            cur["uids"].append(_unescape_colons(f[9]))
        elif rec in ("sub", "ssb"):
            sub_validity = f[1] if len(f) > 1 else ""
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
