"""Signature verification of images and the store of trusted keys.

Verification
    An image is accepted only with an ASCII-armoured detached OpenPGP signature over the
    image file as served (compressed), made by a key trusted for the image's name. Every
    other case is refused with :class:`UntrustedError` naming the :class:`Reason`.

    Sequoia's ``sqv`` decides (through :func:`podmgr.process.run`), with a throw-away
    keyring holding only the keys trusted for that name: the signature is good, made by
    a signing-capable key correctly bound to its certificate, neither revoked nor
    expired when it signed, and acceptable to Sequoia's cryptographic policy (no SHA-1,
    no short RSA). We use the positional form ``sqv --keyring KEYRING SIG FILE``, the
    only one sqv 1.1 (Debian 12) has, which sqv 1.3 (Debian 13) keeps besides its newer
    ``--signature-file``; on success sqv prints the primary fingerprint of each
    certificate that made a good signature and exits 0, else it exits non-zero. Its
    messages are not an interface, so they decide nothing: a refusal is explained from
    the signature packet's issuer (:func:`~podmgr.openpgp.parse_signatures`, read before
    any image byte, which also refuses malformed packets and text-mode signatures) and
    from the trusted keys' state as ``gpg --show-keys`` sees it now; sqv's "Message has
    been manipulated" only labels a bad signature, and any other message is passed on.
    gpg also judges a good signature once more: a primary key or signing subkey that is
    expired or revoked *now* is refused (sqv accepts an image signed before its key
    expired or was retired, gpgv did not), and it gives the user IDs shown.

    Why sqv, not gpgv or pysequoia: the issue names Sequoia through pysequoia, or gpgv
    through ``run()`` with a temporary keyring; sqv is Sequoia's verifier used the way
    gpgv was, and speed decides. gpgv hashes the data a byte at a time (``do_hash`` in
    GnuPG 2.2): for a 100 MB file, 0.42 s for Ed25519/SHA-256 and 0.58 s for RSA/SHA-512
    on the 2-vCPU development machine; sqv (Nettle, with the CPU's SHA instructions)
    takes 0.10 s and 0.32 s, and 0.08 s and 0.30 s of CPU reading a pipe as here.
    pysequoia is a 9.5 MB compiled wheel whose ``verify`` takes the whole data or a file
    name, not a stream, so it would read the image a second time after the import.
    sqv is packaged where podmgr is (Debian's ``sqv``, which Debian 13's apt itself
    depends on; Fedora's ``sequoia-sqv``). Like gpgv, it is the judge of the corner
    cases we must get right (subkey bindings and back-signatures, expiry, revocation,
    algorithms), not our code. gpg, already needed to review and store keys, stays.

How the cost is hidden (issue 4: under 50 ms beyond hashing the image once)
    Not by verifying over a digest we compute in our own pass: neither sqv nor gpgv
    verifies against a given digest, so that would mean checking the signature packet
    ourselves against a key whose validity we would also have to judge — re-implementing
    what sqv is for.

    Instead the check runs alongside the pass that already reads the archive. Fetching
    enters :func:`verifying`, which starts a helper thread (``gpg --show-keys`` on the
    trusted keys, then ``sqv … SIG /proc/self/fd/0`` on a pipe), and the store's one
    import pass (decompress, hash, extract into ``tmp/``) hands every byte it reads to
    the :class:`SignatureCheck`; the verdict is taken after the pass, before anything is
    published. Those are the very bytes stored, so the file cannot change between the
    check and the import either.

    Feeding: the import's thread only keeps each chunk by reference (two list
    operations; Python 3.11's gzip reads 8 KiB at a time, 12,500 chunks per 100 MB) and
    hands the list over every 4 MiB; a feeding thread copies it into the pipe in
    writev(2), which runs without the GIL, on the other CPU. Earlier versions paid for
    this in the import's thread: 256 KiB non-blocking writev batches cost it 45-61 ms
    per 100 MB (the copy), and a lock per chunk about as much again; a writer thread fed
    per chunk (the GIL handed back and forth 12,500 times) made the import 1.4 s longer.
    sqv and the feeding thread run as SCHED_BATCH, so that, woken by each batch, they do
    not preempt the import.

    Measured with ``bench/image_import --only-signature --dir /dev/shm`` (a 102 MB gzip
    image of 170 MB of tar, 9 interleaved signed/unsigned fetch pairs, medians, the
    2-vCPU development machine otherwise quiet: one CPU idle during the unsigned
    fetches). The serial part, what the check adds with a CPU to spare: 3.4 ms to set
    it up, 4.0 ms from the import's last byte to the verdict, 2 ms of the import's
    thread handing bytes over: about 9 ms for Ed25519/SHA-256, 11 ms for
    RSA-3072/SHA-512. On the other CPU, gpg and sqv use 122 ms (Ed25519/SHA-256) and 361
    ms (RSA/SHA-512) of CPU. End to end the fetch itself varies by ±0.5 s per run, so
    the per-pair medians scatter around zero: Ed25519 -10 ms (9 pairs) and +183 ms (21
    pairs), RSA +146 ms (9 pairs) and -159 ms (15 pairs); CPU of the whole fetch +165 to
    +559 ms, the verifier's plus the import running a little slower beside it. gpgv,
    before sqv: 0.45 s of CPU, +411 to +628 ms end to end; ``trust.verify`` on a
    finished file takes 140 ms (Ed25519) with sqv, 708 ms with gpgv. Without a spare
    CPU the check costs its CPU.

Trust store (rkt's layout)
    Two roots: the administrator's ``/etc/podmgr/trustedkeys`` and the vendor's
    ``/usr/lib/podmgr/trustedkeys``. In each:

    - ``root.d/<FINGERPRINT>``: a key trusted for every image name;
    - ``prefix.d/<escaped prefix>/<FINGERPRINT>``: trusted for names equal to the prefix
      or below it on a path boundary (``example.com/app`` covers ``example.com/app/x``
      but not ``example.com/apple``).

    The prefix is escaped as rkt did: ``/`` becomes ``,`` (``example.com/app`` is stored
    as ``prefix.d/example.com,app``). AC identifiers cannot contain ``,`` so the escape is
    reversible. A key file is an ASCII-armoured public key named by its primary key's
    fingerprint (40 uppercase hex digits). An *empty* file in the administrator's root at
    the same relative path as a vendor key masks that vendor key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import fcntl
import os
import re
import resource
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from podmgr import logger
from podmgr.errors import (
    ExitCode,
    InvalidError,
    NotFoundError,
    PermissionDenied,
    PodmgrError,
    UsageError,
)
from podmgr.fsutil import atomic_write
from podmgr.openpgp import (
    FINGERPRINT_RE,
    MAX_KEY_SIZE,
    GnupgHome,
    Gpg,
    KeyInfo,
    SignatureInfo,
    dearmor,
    inspect_key,
    inspect_keys,
    key_age,
    key_fingerprints,
    parse_colons,
    parse_signatures,
)
from podmgr.process import run

__all__ = [
    "ADMIN_TRUST_DIR",
    "VENDOR_TRUST_DIR",
    "KeyInfo",
    "KeyList",
    "Reason",
    "SignatureCheck",
    "TrustChange",
    "TrustStore",
    "TrustedKey",
    "UntrustedError",
    "Verification",
    "check_fingerprint",
    "check_name",
    "dearmor",
    "default_store",
    "escape_prefix",
    "inspect_key",
    "inspect_keys",
    "key_age",
    "load_key_source",
    "normalize_prefix",
    "prefix_matches",
    "screen",
    "verify",
    "verifying",
]

ADMIN_TRUST_DIR = Path("/etc/podmgr/trustedkeys")
VENDOR_TRUST_DIR = Path("/usr/lib/podmgr/trustedkeys")

log = logger.get(__name__)

#: SignatureCheck's feeding thread wakes to pass bytes on to sqv once this many are
#: pending (few wake-ups: each needs the GIL for a moment).
_BATCH = 4 << 20
#: Pending bytes beyond which SignatureCheck.write waits for sqv (bounds memory).
_BACKLOG = 32 << 20
#: The pipe size asked for (the default /proc/sys/fs/pipe-max-size).
_PIPE_SIZE = 1 << 20
#: Chunks per writev(2) at most (Linux's IOV_MAX).
_IOV_MAX = 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_AC_IDENTIFIER = re.compile(r"^[a-z0-9]+([-._~/][a-z0-9]+)*\Z")


class Reason(enum.StrEnum):
    """Why a signature was refused."""

    MISSING = "missing signature"
    MALFORMED = "malformed signature"
    BAD_SIGNATURE = "bad signature"
    UNTRUSTED_KEY = "untrusted key"
    OTHER_PREFIX = "key trusted for another prefix"
    EXPIRED = "expired key"
    REVOKED = "revoked key"
    UNVERIFIED = "signature could not be verified"


class UntrustedError(PodmgrError):
    """An image's signature was refused (fail closed)."""

    exit_code = ExitCode.FAILURE

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        name: str,
        fingerprint: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
        self.name = name
        #: The signing key's primary fingerprint when known, else the signature's issuer.
        self.fingerprint = fingerprint


@dataclasses.dataclass(frozen=True)
class Verification:
    """A signature that was accepted."""

    kind: ClassVar[str] = "trust.verification"

    name: str
    #: Primary key fingerprint: the identity that is trusted.
    fingerprint: str
    uids: list[str]
    #: The key that made the signature: the primary or one of its signing subkeys.
    signing_fingerprint: str

    def text(self) -> str:
        who = ", ".join(self.uids) or "no user ID"
        return f"{self.name}: signed by {self.fingerprint} ({who})"


@dataclasses.dataclass(frozen=True)
class TrustedKey:
    """A key file in the store."""

    fingerprint: str
    #: None: trusted for every name (``root.d``).
    prefix: str | None
    #: ``admin`` or ``vendor``.
    origin: str
    path: Path
    uids: list[str] = dataclasses.field(default_factory=list)

    @property
    def scope(self) -> str:
        return "root" if self.prefix is None else self.prefix

    def data(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "prefix": self.prefix,
            "root": self.prefix is None,
            "origin": self.origin,
            "path": str(self.path),
            "uids": list(self.uids),
        }


@dataclasses.dataclass(frozen=True)
class KeyList:
    kind: ClassVar[str] = "trust.list"

    keys: list[TrustedKey]

    def text(self) -> str:
        if not self.keys:
            return "no trusted keys"
        rows = [("FINGERPRINT", "PREFIX", "ORIGIN", "USER IDS")]
        rows += [(k.fingerprint, k.scope, k.origin, ", ".join(k.uids)) for k in self.keys]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
            for r in rows
        ).rstrip()

    def data(self) -> list[dict[str, Any]]:
        return [k.data() for k in self.keys]


@dataclasses.dataclass(frozen=True)
class TrustChange:
    """Keys added, removed or masked by ``podmgr trust`` / ``podmgr trust rm``."""

    kind: ClassVar[str] = "trust.change"

    added: list[TrustedKey] = dataclasses.field(default_factory=list)
    removed: list[TrustedKey] = dataclasses.field(default_factory=list)
    #: Vendor keys now masked by an empty file in the administrator's root.
    masked: list[TrustedKey] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        lines = [f"trusted {k.fingerprint} for {_scope_text(k)}" for k in self.added]
        lines += [f"removed {k.fingerprint} for {_scope_text(k)}" for k in self.removed]
        lines += [f"masked vendor key {k.fingerprint} for {_scope_text(k)}" for k in self.masked]
        return "\n".join(lines)

    def data(self) -> dict[str, Any]:
        return {
            "added": [k.data() for k in self.added],
            "removed": [k.data() for k in self.removed],
            "masked": [k.data() for k in self.masked],
        }


def _scope_text(k: TrustedKey) -> str:
    return "every image" if k.prefix is None else f"prefix {k.prefix}"


# ---------------------------------------------------------------------------
# Names and prefixes


def check_name(name: str, what: str = "image name") -> str:
    """Return ``name`` if it is an AC identifier, else raise InvalidError."""
    if not _AC_IDENTIFIER.match(name):
        raise InvalidError(
            f"invalid {what} {name!r}: not an AC identifier",
            hint="use lowercase letters, digits and - . _ ~ /, starting and ending "
            "with a letter or digit",
        )
    return name


def normalize_prefix(prefix: str) -> str:
    """Strip a trailing ``/`` and validate; prefixes always match on a path boundary."""
    return check_name(prefix.rstrip("/"), "prefix")


def escape_prefix(prefix: str) -> str:
    """rkt's escape of a prefix into one directory name: ``/`` → ``,``."""
    return normalize_prefix(prefix).replace("/", ",")


def unescape_prefix(escaped: str) -> str:
    return escaped.replace(",", "/")


def prefix_matches(prefix: str, name: str) -> bool:
    """Whether ``prefix`` covers ``name`` on a path boundary."""
    return name == prefix or name.startswith(prefix + "/")


def check_fingerprint(fpr: str) -> str:
    """Normalize a fingerprint (spaces removed, uppercase) and validate it."""
    norm = fpr.replace(" ", "").upper()
    if norm.startswith("0X"):
        norm = norm[2:]
    if not FINGERPRINT_RE.match(norm):
        raise InvalidError(
            f"invalid fingerprint {fpr!r}: want 40 hexadecimal digits",
            hint="see podmgr trust list",
        )
    return norm


def load_key_source(source: str, *, allow_http: bool = False) -> bytes:
    """The bytes of a key given as a file path or an https (or, if allowed, http) URL."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("https", "http"):
        if scheme == "http" and not allow_http:
            raise UsageError(
                f"refusing to fetch a key over plain HTTP: {source}",
                hint="use https, or pass --insecure-allow-http",
            )
        return _fetch_small(source, allow_http)
    if scheme == "file":
        source = urllib.parse.unquote(urllib.parse.urlsplit(source).path)
    elif scheme and len(scheme) > 1:
        raise UsageError(f"unsupported URL scheme in {source!r}", hint="use https or a file path")
    try:
        with open(source, "rb") as f:
            return f.read(MAX_KEY_SIZE + 1)
    except FileNotFoundError as e:
        raise NotFoundError(f"key file not found: {source}") from e
    except OSError as e:
        raise PodmgrError(f"cannot read key file {source}: {e.strerror}") from e


def _fetch_small(url: str, allow_http: bool) -> bytes:
    from podmgr.fetch.http import FetchOptions, get

    return get(url, options=FetchOptions(allow_http=allow_http), limit=MAX_KEY_SIZE).body


# ---------------------------------------------------------------------------
# The store


def default_store() -> TrustStore:
    """The trust store podmgr uses: ``$PODMGR_TRUST_DIR``/``$PODMGR_VENDOR_TRUST_DIR``
    (as ``podmgr trust`` reads them) or the default roots."""
    return TrustStore(
        Path(os.environ.get("PODMGR_TRUST_DIR") or ADMIN_TRUST_DIR),
        Path(os.environ.get("PODMGR_VENDOR_TRUST_DIR") or VENDOR_TRUST_DIR),
    )


class TrustStore:
    """Trusted keys under an administrator root and a vendor root (see module doc)."""

    def __init__(
        self, admin_dir: Path = ADMIN_TRUST_DIR, vendor_dir: Path | None = VENDOR_TRUST_DIR
    ) -> None:
        self.admin_dir = Path(admin_dir)
        self.vendor_dir = Path(vendor_dir) if vendor_dir is not None else None

    # -- reading

    def _scan(self, root: Path, origin: str) -> Iterator[tuple[TrustedKey, bool]]:
        """(key, is_empty) for each well-named file under ``root``."""
        candidates: list[tuple[Path, str | None]] = [(root / "root.d", None)]
        prefix_d = root / "prefix.d"
        if prefix_d.is_dir():
            candidates += [
                (d, unescape_prefix(d.name)) for d in sorted(prefix_d.iterdir()) if d.is_dir()
            ]
        for d, prefix in candidates:
            if not d.is_dir():
                continue
            for f in sorted(d.iterdir()):
                if not FINGERPRINT_RE.match(f.name) or not f.is_file():
                    continue
                empty = f.stat().st_size == 0
                yield TrustedKey(f.name, prefix, origin, f), empty

    def _all(self) -> tuple[list[TrustedKey], list[TrustedKey]]:
        """(effective keys, vendor keys masked by the administrator)."""
        admin = list(self._scan(self.admin_dir, "admin"))
        masks = {k.path.relative_to(self.admin_dir) for k, empty in admin if empty}
        keys = [k for k, empty in admin if not empty]
        masked = []
        if self.vendor_dir is not None:
            for k, empty in self._scan(self.vendor_dir, "vendor"):
                if empty:
                    continue
                rel = k.path.relative_to(self.vendor_dir)
                if rel in masks:
                    masked.append(k)
                elif not (self.admin_dir / rel).exists():
                    keys.append(k)
        return keys, masked

    def keys_for(self, name: str) -> list[TrustedKey]:
        """Effective keys trusted for image ``name`` (root keys and matching prefixes)."""
        check_name(name)
        keys, _ = self._all()
        return [k for k in keys if k.prefix is None or prefix_matches(k.prefix, name)]

    # -- writing

    def add(self, key_bytes: bytes, prefix: str | None) -> TrustedKey:
        """Validate a public key and trust it for ``prefix`` (None: every image)."""
        info, armored = inspect_key(key_bytes)
        return self.add_armored(info, armored, prefix)

    def add_armored(self, info: KeyInfo, armored: str, prefix: str | None) -> TrustedKey:
        """Store a key already checked by :func:`inspect_key`."""
        rel = self._relpath(info.fingerprint, prefix)
        path = self.admin_dir / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, armored, 0o644)
        except PermissionError as e:
            raise PermissionDenied(
                f"cannot write {path}: permission denied", hint="run it again as root"
            ) from e
        return TrustedKey(
            info.fingerprint,
            None if prefix is None else normalize_prefix(prefix),
            "admin",
            path,
            list(info.uids),
        )

    def remove(self, fingerprint: str) -> TrustChange:
        """Stop trusting a key everywhere: delete admin files, mask vendor ones."""
        fpr = check_fingerprint(fingerprint)
        keys, _ = self._all()
        found = [k for k in keys if k.fingerprint == fpr]
        if not found:
            raise NotFoundError(f"no trusted key {fpr}", hint="see podmgr trust list")
        change = TrustChange()
        try:
            for k in found:
                if k.origin == "admin":
                    k.path.unlink()
                    change.removed.append(k)
                    if self.vendor_dir is not None:
                        vendor = self.vendor_dir / k.path.relative_to(self.admin_dir)
                        if vendor.is_file() and vendor.stat().st_size > 0:
                            # The admin copy shadowed a vendor key; keep it out too.
                            atomic_write(k.path, b"")
                            change.masked.append(dataclasses.replace(k, origin="vendor"))
                else:
                    assert self.vendor_dir is not None
                    mask = self.admin_dir / k.path.relative_to(self.vendor_dir)
                    mask.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(mask, b"")
                    change.masked.append(k)
        except PermissionError as e:
            raise PermissionDenied(
                f"cannot change {self.admin_dir}: permission denied", hint="run it again as root"
            ) from e
        return change

    @staticmethod
    def _relpath(fingerprint: str, prefix: str | None) -> Path:
        fpr = check_fingerprint(fingerprint)
        if prefix is None:
            return Path("root.d", fpr)
        return Path("prefix.d", escape_prefix(prefix), fpr)

    def find(self, key_id: str) -> list[TrustedKey]:
        """Store entries (effective or masked) whose key or a subkey matches ``key_id``.

        ``key_id`` is a fingerprint or a 16-digit long key ID, as a signature names its issuer.
        Only used to explain a refusal, so it may be slow.
        """
        keys, masked = self._all()
        everything = keys + masked
        if not everything:
            return []
        infos = _infos(everything)
        kid = key_id.upper()
        hits = []
        for k in everything:
            info = infos.get(k.path)
            ids = [k.fingerprint] + (info.subkeys if info else [])
            if any(i == kid or i.endswith(kid) for i in ids):
                hits.append(dataclasses.replace(k, uids=info.uids if info else []))
        return hits

    # Last in the class: the name shadows the builtin for annotations below it.
    def list(self, *, with_uids: bool = True) -> KeyList:
        """Every effective key, with its user IDs (one gpg run for all of them)."""
        keys, _ = self._all()
        if with_uids and keys:
            keys = _with_uids(keys)
        return KeyList(keys)


def _infos(keys: Iterable[TrustedKey]) -> dict[Path, KeyInfo]:
    """Parse key files with one gpg run; a file that does not parse is left out."""
    keys = list(keys)
    with GnupgHome() as gpg:
        by_fpr = _show_keys(gpg, [k.path for k in keys])
    return {k.path: by_fpr[k.fingerprint] for k in keys if k.fingerprint in by_fpr}


def _show_keys(gpg: Gpg, paths: Iterable[Path]) -> dict[str, KeyInfo]:
    """The keys in these files as gpg reads them now, by primary fingerprint."""
    out = gpg("--show-keys", *paths, check=False).stdout
    return {i.fingerprint: i for i in parse_colons(out)}


def _with_uids(keys: list[TrustedKey]) -> list[TrustedKey]:
    infos = _infos(keys)
    return [dataclasses.replace(k, uids=infos[k.path].uids) if k.path in infos else k for k in keys]


# ---------------------------------------------------------------------------
# Verification

#: sqv reads the image from its stdin, a pipe, by this name (it has no "-").
_STDIN = "/proc/self/fd/0"
#: The signature type of a signature over a file's bytes (a "binary document").
_BINARY_SIGNATURE = 0x00


def _trust_hint(name: str) -> str:
    return f"if you trust this key for {name}, run: podmgr trust --prefix {name} KEYFILE"


#: The largest signature file read (an armoured signature is about 1 KiB).
MAX_SIGNATURE_FILE = 1 << 20


def _read_small(path: str | os.PathLike[str], name: str) -> bytes:
    """A signature file's bytes: only a regular file (a FIFO or /dev/zero beside an
    image must neither hang nor exhaust memory), of at most MAX_SIGNATURE_FILE bytes."""

    def malformed(why: str) -> UntrustedError:
        return UntrustedError(
            f"image {name}: malformed signature: {os.fspath(path)} {why}",
            reason=Reason.MALFORMED,
            name=name,
            hint="the .aci.asc file must be an ASCII-armoured detached OpenPGP signature",
        )

    from podmgr.fsutil import READ_UNTRUSTED, read_regular

    try:
        fd = os.open(path, READ_UNTRUSTED)
    except OSError as e:
        raise malformed(f"cannot be read: {e.strerror}") from None
    try:
        data = read_regular(fd, MAX_SIGNATURE_FILE)
    finally:
        os.close(fd)
    if isinstance(data, str):
        raise malformed(data)
    return data


def _read_signature(
    signature_path: str | os.PathLike[str] | None, name: str
) -> tuple[bytes, list[SignatureInfo]]:
    """The signature file and its packets; refuses a missing signature, malformed armour
    or packets, and anything but signatures over a file's bytes, before any image byte."""
    if signature_path is None or not os.path.exists(signature_path):
        raise UntrustedError(
            f"image {name} has no signature: refusing to use it unsigned",
            reason=Reason.MISSING,
            name=name,
            hint="fetch it with its .aci.asc signature",
        )
    sig = _read_small(signature_path, name)
    try:
        signatures = [s for block in dearmor(sig, "SIGNATURE") for s in parse_signatures(block)]
    except InvalidError as e:
        raise UntrustedError(
            f"image {name}: malformed signature: {e.message}",
            reason=Reason.MALFORMED,
            name=name,
            hint="the .aci.asc file must be an ASCII-armoured detached OpenPGP signature",
        ) from e
    other = next((s for s in signatures if s.sig_type != _BINARY_SIGNATURE), None)
    if other is not None:
        # A text signature (0x01) holds for any line-ending variant of the file.
        raise UntrustedError(
            f"image {name}: signature could not be verified: it is of type "
            f"0x{other.sig_type:02x}, not a signature over the file's bytes (0x00)",
            reason=Reason.UNVERIFIED,
            name=name,
            fingerprint=other.issuer,
            hint="sign the image with gpg --detach-sign --armor (not --textmode)",
        )
    return sig, signatures


def _refuse_untrusted_issuer(
    signatures: list[SignatureInfo], keys: list[TrustedKey], label: str, store: TrustStore
) -> None:
    """Raise UntrustedError unless one of ``keys`` (or a subkey of one) is a signature's
    issuer. A signature that names no issuer passes (sqv tries every trusted key).

    Issue 18: the verdict otherwise came after the import pass, so a decompression bomb
    signed by an unknown key was extracted in full before it was refused. The issuer
    is an unverified claim, so this can only refuse early, never accept.
    """
    issuers = [s.issuer for s in signatures if s.issuer]
    if not issuers:
        return
    if any(s.issued_by(k.fingerprint) for s in signatures for k in keys):
        return  # a primary key: the common case, decided without gpg
    # A signing subkey: from the key files' packets (v4 fingerprints are SHA-1 over the
    # key packet), and from gpg only for keys that this cannot read.
    unread = []
    for k in keys:
        try:
            fprs = key_fingerprints(k.path.read_bytes()[: MAX_KEY_SIZE + 1])
        except OSError:
            continue  # an unreadable key cannot verify anything
        if fprs is None:
            unread.append(k)
        elif any(s.issued_by(f) for s in signatures for f in fprs):
            return
    if unread:
        with GnupgHome() as gpg:
            infos = _usable_keys(unread, gpg)
        if any(_signing_key(info, signatures) for _, info in infos.values()):
            return
    raise _untrusted_key(label, issuers[0], store)


def screen(
    signature_path: str | os.PathLike[str] | None,
    label: str,
    *,
    store: TrustStore,
    name: str | None = None,
) -> None:
    """Refuse, before any image byte is read, a signature that cannot pass: missing,
    malformed, text-mode, or by a key not in the trust store (for ``name``, or for any
    name while the image's name is not known yet). ``label`` names the image in errors.
    """
    _, signatures = _read_signature(signature_path, name or label)
    if name is not None:
        keys = store.keys_for(name)
    else:
        keys, _ = store._all()
    _refuse_untrusted_issuer(signatures, keys, name or label, store)


def _usable_keys(keys: list[TrustedKey], gpg: Gpg) -> dict[str, tuple[TrustedKey, KeyInfo]]:
    """The trusted keys gpg can read, by primary fingerprint, with their state now.

    One ``gpg --show-keys`` for all of them: a file that does not hold the key it is
    named after is left out, so that it can neither block sqv's keyring nor be trusted.
    """
    unique: dict[str, TrustedKey] = {}
    for k in keys:
        unique.setdefault(k.fingerprint, k)  # trusted for root and a prefix: once
    if not unique:
        return {}
    infos = _show_keys(gpg, [k.path for k in unique.values()])
    return {f: (k, infos[f]) for f, k in unique.items() if f in infos}


def _write_keyring(path: Path, keys: Iterable[TrustedKey]) -> None:
    # Binary keyring = concatenated key packets; armour is decoded here, not by sqv.
    with open(path, "wb") as f:
        for k in keys:
            try:
                for block in dearmor(k.path.read_bytes(), "PUBLIC KEY BLOCK"):
                    f.write(block)
            except (InvalidError, OSError):
                continue  # a broken store file must not block the other keys


class SignatureCheck:
    """A running ``sqv`` checking a detached signature over the bytes given to :meth:`write`.

    Made by :func:`verifying`. sqv reads a pipe; :meth:`write` keeps the chunk (by
    reference) and hands the chunks over every :data:`_BATCH` bytes to a feeding
    thread, which writes them into the pipe (see the module doc). Only a backlog beyond
    :data:`_BACKLOG` (sqv far behind) makes the caller wait, which bounds memory.
    :meth:`result` ends the input and returns the :class:`Verification` or raises
    :class:`UntrustedError`; the verdict is kept, so later calls give the same one.

    The helper thread first reads the trusted keys with ``gpg --show-keys`` (their
    state now, user IDs, subkeys; while the first bytes wait in the pipe), writes
    sqv's keyring from those gpg could read, then runs sqv over the pipe.
    """

    def __init__(
        self,
        name: str,
        gpg: Gpg,
        signatures: list[SignatureInfo],
        keys: list[TrustedKey],
        store: TrustStore,
    ) -> None:
        self.name = name
        self._gpg = gpg
        self._signatures = signatures
        self._keys = keys
        self._store = store
        #: Bytes given to write() so far.
        self.fed = 0
        #: Seconds result() waited for sqv after the last byte (for the benchmark).
        self.waited = 0.0
        #: CPU seconds of gpg and sqv (of every child reaped meanwhile), and of the
        #: caller's thread passing bytes on (for the benchmark).
        self.cpu_verifier = 0.0
        self.cpu_feeding = 0.0
        self._local: list[bytes] = []  # not yet handed over (the import's thread only)
        self._local_size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._closing = False  # no more input (result() or close())
        self._cond = threading.Condition()
        self._broken = False  # sqv stopped reading (or never ran): the rest is dropped
        self._feed_error: OSError | None = None
        self._infos: dict[str, tuple[TrustedKey, KeyInfo]] = {}
        self._proc: subprocess.CompletedProcess[str] | None = None
        self._run_error: BaseException | None = None
        self._verdict: Verification | UntrustedError | None = None
        self._ended = False
        r, self._w = os.pipe()
        with contextlib.suppress(OSError):  # fewer wake-ups; the default 64 KiB also works
            fcntl.fcntl(self._w, _F_SETPIPE_SZ, _PIPE_SIZE)
        # The thread waits for gpg and sqv and reads their output: it needs the GIL
        # when they finish, not while the image is fed.
        self._sqv = threading.Thread(target=self._run, args=(r,), name="sqv", daemon=True)
        self._sqv.start()
        # The feeding thread copies the image into the pipe (in writev(2), without the
        # GIL), so that the copy runs beside the import, not in its thread.
        self._feeder = threading.Thread(target=self._feed, name="sqv-feed", daemon=True)
        self._feeder.start()

    @property
    def done(self) -> bool:
        """Whether the verdict is in."""
        return self._verdict is not None

    def _run(self, r: int) -> None:
        try:
            # SCHED_BATCH for this thread only, hence for the processes it starts: woken
            # by each write, sqv then does not preempt the import (see the module doc).
            with contextlib.suppress(AttributeError, OSError):
                os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            self._infos = _usable_keys(self._keys, self._gpg)
            if not self._infos:
                return  # no key could verify it: judged untrusted without sqv
            keyring = self._gpg.home / "trusted.pgp"
            _write_keyring(keyring, (k for k, _ in self._infos.values()))
            self._proc = run(
                ["sqv", "--keyring", keyring, self._gpg.home / "signature.asc", _STDIN],
                stdin=r,
                check=False,
            )
        except BaseException as e:
            self._run_error = e
        else:
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.cpu_verifier = (after.ru_utime + after.ru_stime) - (
                before.ru_utime + before.ru_stime
            )
        finally:
            # sqv is gone: closing the last read end makes writes fail with EPIPE.
            os.close(r)

    def write(self, data: bytes) -> int:
        """Pass on the next bytes of the image: kept by reference, handed to the feeding
        thread every :data:`_BATCH` bytes (the import reads 8 KiB at a time under Python
        3.11's gzip, so the common path is two list operations, without a lock)."""
        n = len(data)
        self.fed += n
        if self._broken:
            return n
        self._local.append(data if type(data) is bytes else bytes(data))
        self._local_size += n
        if self._local_size >= _BATCH:
            self._hand_over()
        return n

    def _hand_over(self) -> None:
        t0 = time.thread_time()
        with self._cond:
            self._pending += self._local
            self._pending_size += self._local_size
            self._local, self._local_size = [], 0
            self._cond.notify_all()
            # Memory stays bounded: wait while sqv is far behind.
            while self._pending_size > _BACKLOG and not self._broken:
                self._cond.wait()
        self.cpu_feeding += time.thread_time() - t0

    def _feed(self) -> None:
        # SCHED_BATCH, like sqv: woken by each batch, it does not preempt the import.
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        try:
            while True:
                with self._cond:
                    while not self._closing and self._pending_size < _BATCH:
                        self._cond.wait()
                    batch, self._pending, self._pending_size = self._pending, [], 0
                    last = self._closing
                    self._cond.notify_all()  # a write() waiting for room
                if not self._broken:
                    self._write_all(batch)
                del batch
                if last:
                    return
        finally:
            os.close(self._w)  # sqv sees the end of the image (or a short one)

    def _write_all(self, batch: list[bytes]) -> None:
        views = [memoryview(b) for b in batch]
        while views and not self._broken:
            try:
                n = os.writev(self._w, views[:_IOV_MAX])
            except BrokenPipeError:
                self._broken = True
            except OSError as e:
                self._feed_error, self._broken = e, True
            else:
                i = 0
                while i < len(views) and n >= len(views[i]):
                    n -= len(views[i])
                    i += 1
                del views[:i]
                if n:
                    views[0] = views[0][n:]
        if self._broken:
            with self._cond:
                self._pending, self._pending_size = [], 0
                self._cond.notify_all()

    def _end(self, *, abort: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        if not abort and not self._broken and self._local:
            self._hand_over()
        with self._cond:
            if abort:
                self._broken = True  # sqv sees a short input and refuses it
                self._pending, self._pending_size = [], 0
            self._closing = True
            self._cond.notify_all()
        self._feeder.join()
        self._sqv.join()

    def result(self) -> Verification:
        """End the input, wait for sqv and judge: the Verification, or UntrustedError."""
        if self._verdict is None:
            t0 = time.perf_counter()
            self._end()
            self.waited = time.perf_counter() - t0
            log.debug(
                "sqv finished %.1f ms after the last of %d bytes; CPU: %.0f ms in gpg and sqv, "
                "%.0f ms passing the image on",
                self.waited * 1000,
                self.fed,
                self.cpu_verifier * 1000,
                self.cpu_feeding * 1000,
            )
            if self._run_error is not None:
                raise self._run_error
            try:
                if self._feed_error is not None:
                    raise UntrustedError(
                        f"image {self.name}: signature could not be verified: "
                        f"cannot pass the image to sqv: {self._feed_error.strerror}",
                        reason=Reason.UNVERIFIED,
                        name=self.name,
                    )
                self._verdict = _judge(
                    self._proc, self._signatures, self._infos, self.name, self._store
                )
            except UntrustedError as e:
                self._verdict = e
        if isinstance(self._verdict, UntrustedError):
            raise self._verdict
        return self._verdict

    def close(self) -> None:
        """Stop sqv if no verdict was asked for (it then refuses the short input)."""
        self._end(abort=True)


@contextlib.contextmanager
def verifying(
    signature_path: str | os.PathLike[str] | None, name: str, *, store: TrustStore
) -> Iterator[SignatureCheck]:
    """Start checking a detached signature by a key trusted for ``name``; feed the image
    to the :class:`SignatureCheck` and ask for its :meth:`~SignatureCheck.result`.

    A missing signature, malformed armour or packets, a text-mode signature, and a
    signature whose issuer is no key trusted for ``name`` are refused here, before any
    image byte. sqv and its temporary keyring are gone when the
    block exits.
    """
    t0 = time.perf_counter()
    check_name(name)
    sig, signatures = _read_signature(signature_path, name)
    keys = store.keys_for(name)
    _refuse_untrusted_issuer(signatures, keys, name, store)
    with GnupgHome() as gpg:
        # sqv reads our copy: the signature judged is the one parsed above.
        (gpg.home / "signature.asc").write_bytes(sig)
        check = SignatureCheck(name, gpg, signatures, keys, store)
        setup_ms = (time.perf_counter() - t0) * 1000
        log.debug("signature check of %s set up in %.1f ms", name, setup_ms)
        try:
            yield check
        finally:
            check.close()


def verify(
    image_path: str | os.PathLike[str],
    signature_path: str | os.PathLike[str] | None,
    name: str,
    *,
    store: TrustStore,
) -> Verification:
    """Verify a detached signature over the file ``image_path`` by a key trusted for ``name``.

    Raises UntrustedError (exit code 1) naming the :class:`Reason` on every refusal.
    Fetching does not call this: it feeds :func:`verifying` during its import pass.
    """
    with verifying(signature_path, name, store=store) as check:
        try:
            with open(image_path, "rb") as f:
                while chunk := f.read(_PIPE_SIZE):
                    check.write(chunk)
        except FileNotFoundError:
            raise NotFoundError(f"image file not found: {os.fspath(image_path)}") from None
        return check.result()


def _signing_key(info: KeyInfo, signatures: list[SignatureInfo]) -> str | None:
    """The key of ``info`` (primary or subkey) that a signature names as its issuer."""
    for sig in signatures:
        for fpr in (info.fingerprint, *info.subkeys):
            if sig.issued_by(fpr):
                return fpr
    return None


def _check_state(name: str, info: KeyInfo, signing: str) -> None:
    """Refuse a signer whose primary key or signing subkey is revoked or expired now.

    sqv judges a key at the signature's creation time, gpg (and so this) at the time of
    the check: an image signed before its key expired or was retired is refused too.
    """
    states = {info.validity, info.subkey_validity.get(signing, "")}
    fpr = info.fingerprint
    if "r" in states:
        raise UntrustedError(
            f"image {name}: signed by revoked key {fpr}",
            reason=Reason.REVOKED,
            name=name,
            fingerprint=fpr,
            hint="the publisher revoked this key; get an image signed with a current key",
        )
    if "e" in states:
        raise UntrustedError(
            f"image {name}: signed by expired key {fpr}",
            reason=Reason.EXPIRED,
            name=name,
            fingerprint=fpr,
            hint="get an image signed with a current key, or trust the publisher's renewed key "
            f"with podmgr trust --prefix {name} KEYFILE",
        )


def _sqv_says(stderr: str) -> str:
    """sqv's reason on one line, without its headers and its count of valid signatures."""
    lines = [line.strip() for line in stderr.splitlines()]
    said = [
        line
        for line in lines
        if line and not line.endswith(":") and "signatures are valid" not in line
    ]
    return " ".join(said)[:300] or "sqv refused it"


def _judge(
    proc: subprocess.CompletedProcess[str] | None,
    signatures: list[SignatureInfo],
    infos: dict[str, tuple[TrustedKey, KeyInfo]],
    name: str,
    store: TrustStore,
) -> Verification:
    """Turn sqv's exit and output (None: not run, no usable key) into a verdict.

    sqv decides whether the signature is good; the reason for a refusal comes from the
    signature's issuer and the trusted keys' state, and sqv's message only tells a
    modified image ("Message has been manipulated") from other failures.
    """
    if proc is not None and proc.returncode == 0:
        # sqv prints the primary fingerprint of each certificate with a good signature.
        said = [line.strip().upper() for line in proc.stdout.splitlines() if line.strip()]
        primary = next((f for f in said if f in infos), None)
        if primary is None:  # sqv only saw trusted keys; never expected
            raise UntrustedError(
                f"image {name}: signature could not be verified: sqv named no trusted key "
                f"({', '.join(said) or 'none'})",
                reason=Reason.UNVERIFIED,
                name=name,
            )
        info = infos[primary][1]
        signing = _signing_key(info, signatures) or primary
        _check_state(name, info, signing)
        return Verification(
            name=name, fingerprint=primary, uids=list(info.uids), signing_fingerprint=signing
        )
    stderr = (proc.stderr or "") if proc is not None else ""
    for _, info in infos.values():
        by = _signing_key(info, signatures)
        if by is None:
            continue
        if "manipulated" in stderr.lower():
            raise UntrustedError(
                f"image {name}: bad signature: the image was modified or the signature is "
                "for a different file",
                reason=Reason.BAD_SIGNATURE,
                name=name,
                fingerprint=info.fingerprint,
                hint="fetch the image and its signature again; do not use this image",
            )
        _check_state(name, info, by)
        raise UntrustedError(
            f"image {name}: signature by {info.fingerprint} could not be verified: "
            + _sqv_says(stderr),
            reason=Reason.UNVERIFIED,
            name=name,
            fingerprint=info.fingerprint,
        )
    issuer = next((s.issuer for s in signatures if s.issuer), None)
    if issuer is None:
        raise UntrustedError(
            f"image {name}: signature could not be verified: it does not name its key",
            reason=Reason.UNVERIFIED,
            name=name,
        )
    raise _untrusted_key(name, issuer, store)


def _untrusted_key(name: str, key_id: str, store: TrustStore) -> UntrustedError:
    """Explain why a signer is not trusted for ``name``: unknown, other prefix, masked."""
    entries = store.find(key_id)
    fpr = entries[0].fingerprint if entries else key_id
    effective = [k for k in entries if not _is_masked(k, store)]
    if effective:
        scopes = ", ".join(sorted({k.scope for k in effective}))
        return UntrustedError(
            f"image {name}: key {fpr} is trusted only for prefix {scopes}, not for {name}",
            reason=Reason.OTHER_PREFIX,
            name=name,
            fingerprint=fpr,
            hint=_trust_hint(name),
        )
    extra = " (a vendor key masked by the administrator)" if entries else ""
    return UntrustedError(
        f"image {name}: signed by untrusted key {fpr}{extra}",
        reason=Reason.UNTRUSTED_KEY,
        name=name,
        fingerprint=fpr,
        hint=_trust_hint(name),
    )


def _is_masked(k: TrustedKey, store: TrustStore) -> bool:
    if k.origin != "vendor" or store.vendor_dir is None:
        return False
    mask = store.admin_dir / k.path.relative_to(store.vendor_dir)
    return mask.is_file() and mask.stat().st_size == 0
