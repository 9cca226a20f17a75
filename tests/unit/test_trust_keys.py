"""OpenPGP keys generated at test time (no private key is ever committed).

One GNUPGHOME per test session holds every key; tests sign files with it and put the
public keys into temporary trust stores.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKED_PAST = "20200101T000000"


@dataclasses.dataclass
class Keys:
    home: Path
    #: name -> primary fingerprint
    fpr: dict[str, str]
    #: name -> fingerprint of the signing subkey (only "sub")
    subkey: dict[str, str]
    #: name -> exported public key that differs from the signing home's (revocations)
    published: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def gpg(self, *args: str, faked: str | None = None) -> str:
        extra = ["--faked-system-time", f"{faked}!"] if faked else []
        p = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", "--no-tty", "--pinentry-mode",
             "loopback", "--passphrase", "", *extra, *args],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return p.stdout

    def public(self, name: str, *, armor: bool = True) -> bytes:
        if name in self.published:
            return self.published[name]
        args = ["--export", self.fpr[name]]
        if armor:
            args.insert(0, "--armor")
        p = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--batch", *args], capture_output=True, check=True
        )
        return p.stdout

    def secret(self, name: str) -> bytes:
        return self.gpg("--armor", "--export-secret-keys", self.fpr[name]).encode()

    def sign(self, name: str, path: Path, out: Path | None = None) -> Path:
        """A detached armoured signature of ``path`` by key ``name``."""
        out = out or path.with_name(path.name + ".asc")
        signer = self.subkey[name] + "!" if name in self.subkey else self.fpr[name]
        faked = "20200101T010000" if name in ("expired", "subexp") else None
        out.unlink(missing_ok=True)
        self.gpg("--armor", "--detach-sign", "-u", signer, "-o", str(out), str(path), faked=faked)
        return out


def generate(home: Path) -> Keys:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = Keys(home, {}, {})

    def gen(name: str, algo: str, usage: str = "sign", expire: str = "0", **kw: str) -> None:
        keys.gpg("--quick-gen-key", f"{name} <{name}@example.com>", algo, usage, expire, **kw)
        keys.fpr[name] = _fingerprints(keys, f"{name}@example.com")[0]

    gen("ed", "ed25519")
    gen("rsa", "rsa2048")
    gen("other", "ed25519")
    gen("vendor", "ed25519")
    # A certify-only primary with a signing subkey: signatures come from the subkey.
    gen("sub", "ed25519", "cert")
    keys.gpg("--quick-add-key", keys.fpr["sub"], "ed25519", "sign", "0")
    keys.subkey["sub"] = _fingerprints(keys, "sub@example.com")[1]
    # Valid for one day in 2020: long expired now.
    gen("expired", "ed25519", "sign", "1d", faked=FAKED_PAST)
    gen("revoked", "ed25519")
    # gpg will not sign with a revoked key, so the revocation goes into a second home,
    # whose export is what a store holding the updated key would contain.
    cert = (home / "openpgp-revocs.d" / f"{keys.fpr['revoked']}.rev").read_text()
    revoked = Keys(home.with_name(home.name + "-revoked"), dict(keys.fpr), {})
    revoked.home.mkdir(mode=0o700)
    pub = home / "revoked.pub"
    pub.write_bytes(keys.public("revoked"))
    # gpg prefixes the armour with ':' so that the certificate is not imported by mistake.
    revocation = home / "revoked.rev"
    revocation.write_text(cert.replace(":-----BEGIN", "-----BEGIN"))
    revoked.gpg("--import", str(pub), str(revocation))
    keys.published["revoked"] = revoked.public("revoked")
    # Signing subkeys of certify-only primaries: one valid for a day in 2020 (and used
    # then: the signature was good when made), one revoked since it signed.
    for name in ("subexp", "subrev"):
        past = {"faked": FAKED_PAST} if name == "subexp" else {}
        gen(name, "ed25519", "cert", **past)
        keys.gpg("--quick-add-key", keys.fpr[name], "ed25519", "sign",
                 "1d" if past else "0", **past)  # fmt: skip
        keys.subkey[name] = _fingerprints(keys, f"{name}@example.com")[1]
    # The subkey is revoked in a copy of the home (its secret keys, not the agent's
    # sockets), so that the signing home can still sign with it.
    subrev = Keys(home.with_name(home.name + "-subrev"), dict(keys.fpr), dict(keys.subkey))
    shutil.copytree(home, subrev.home, ignore=shutil.ignore_patterns("S.*"))
    subprocess.run(
        ["gpg", "--homedir", str(subrev.home), "--batch", "--no-tty", "--pinentry-mode",
         "loopback", "--passphrase", "", "--command-fd", "0", "--edit-key", keys.fpr["subrev"]],
        input="key 1\nrevkey\ny\n0\n\ny\nsave\n", capture_output=True, text=True, check=True,
    )  # fmt: skip
    keys.published["subrev"] = subrev.public("subrev")
    return keys


def _fingerprints(keys: Keys, uid: str) -> list[str]:
    out = keys.gpg("--with-colons", "--list-keys", uid)
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")]


def write_key(root: Path, keys: Keys, name: str, prefix: str | None = None) -> Path:
    """Put key ``name`` into a trust root directly (bypassing add()'s checks)."""
    fpr = keys.fpr[name]
    d = root / "root.d" if prefix is None else root / "prefix.d" / prefix.replace("/", ",")
    d.mkdir(parents=True, exist_ok=True)
    (d / fpr).write_bytes(keys.public(name))
    return d / fpr


def env_for(admin: Path, vendor: Path) -> dict[str, str]:
    return {**os.environ, "PODMGR_TRUST_DIR": str(admin), "PODMGR_VENDOR_TRUST_DIR": str(vendor)}


_KEYS: Keys | None = None


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """Every test key, generated once per session (other modules import this fixture)."""
    global _KEYS
    if _KEYS is None:
        _KEYS = generate(tmp_path_factory.mktemp("gnupg"))
    yield _KEYS
    # gpg starts an agent per home directory; a test run must not leave them running.
    for home in tmp_path_factory.getbasetemp().glob("gnupg*"):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)


def test_generated_keys_have_the_expected_properties(keys: Keys) -> None:
    listing = keys.gpg("--with-colons", "--list-keys")
    validity = {
        f[4]: f[1] for f in (line.split(":") for line in listing.splitlines()) if f[0] == "pub"
    }
    assert validity[keys.fpr["expired"][-16:]] == "e"
    assert b"BEGIN PGP PUBLIC KEY" in keys.public("revoked")
    assert validity[keys.fpr["ed"][-16:]] == "u"
    assert keys.subkey["sub"] != keys.fpr["sub"]
    subkeys = {
        f[4]: f[1] for f in (line.split(":") for line in listing.splitlines()) if f[0] == "sub"
    }
    assert subkeys[keys.subkey["subexp"][-16:]] == "e"
    assert b"BEGIN PGP PUBLIC KEY" in keys.public("subrev")
