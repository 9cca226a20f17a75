"""Signed images fetched inside the box: sqv and gpg as podmgr finds them there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from podfix import build_image

NAME = "example.com/signed"


class Env:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.gnupg = root / "gnupg"
        self.state = root / "state"
        self.env = {
            **os.environ,
            "PODMGR_TRUST_DIR": str(root / "trust"),
            "PODMGR_VENDOR_TRUST_DIR": str(root / "vendor-trust"),
        }

    def gpg(self, *args: str) -> str:
        return subprocess.run(
            ["gpg", "--homedir", str(self.gnupg), "--batch", "--no-tty", "--pinentry-mode",
             "loopback", "--passphrase", "", *args],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def podmgr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "podmgr", "--dir", str(self.state), *args],
            capture_output=True, text=True, env=self.env, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip

    def images(self) -> list[dict[str, Any]]:
        p = self.podmgr("image", "list", "--format=json")
        assert p.returncode == 0, p.stderr
        data: list[dict[str, Any]] = json.loads(p.stdout)["data"]
        return data


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, Path, str]]:
    """A trusted Ed25519 key, generated here, and an image it signed."""
    e = Env(tmp_path_factory.mktemp("trust"))
    e.gnupg.mkdir(mode=0o700)
    try:
        e.gpg("--quick-gen-key", "box <box@example.com>", "ed25519", "sign", "0")
        listing = e.gpg("--with-colons", "--list-keys")
        fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        key = e.root / "key.asc"
        key.write_text(e.gpg("--armor", "--export", fpr))
        aci = build_image(e.root / "signed.aci", NAME, ["/bin/true"])
        e.gpg("--armor", "--detach-sign", "-o", f"{aci}.asc", str(aci))
        p = e.podmgr("trust", "--prefix", NAME, "--skip-fingerprint-review", str(key))
        assert p.returncode == 0, p.stderr
        yield e, aci, fpr
    finally:
        subprocess.run(["gpgconf", "--homedir", str(e.gnupg), "--kill", "all"], check=False)


def test_signed_image_is_verified_and_recorded(signed: tuple[Env, Path, str]) -> None:
    e, aci, fpr = signed
    p = e.podmgr("fetch", str(aci))
    assert p.returncode == 0, p.stderr
    (image,) = [i for i in e.images() if i["name"] == NAME]
    assert image["verified"] is True
    assert image["signerFingerprint"] == fpr


def test_tampered_image_is_refused_and_not_stored(signed: tuple[Env, Path, str]) -> None:
    e, aci, _ = signed
    before = e.images()
    tampered = e.root / "tampered.aci"
    data = bytearray(aci.read_bytes())
    data[len(data) // 2] ^= 0x01
    tampered.write_bytes(bytes(data))
    p = e.podmgr("fetch", f"--signature={aci}.asc", str(tampered))
    assert p.returncode == 1
    errors = [line for line in p.stderr.splitlines() if line.startswith("podmgr: error:")]
    assert len(errors) == 1 and "bad signature" in errors[0], p.stderr
    assert "Traceback" not in p.stderr
    assert e.images() == before
