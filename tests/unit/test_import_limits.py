"""Import limits and early signature refusal (issue 18): a decompression bomb is stopped
by the configured caps (exit 10), a signature that cannot pass is refused before the
first byte of the image is read, and the store keeps working after each."""

from __future__ import annotations

import gzip
import io
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aci_util import MANIFEST, entry, tar_of
from fetch_servers import PKI, Blob, make_pki, serve
from store_util import build_image, manifest
from test_trust_keys import Keys, keys, write_key

from podmgr import aci, imagefetch
from podmgr.errors import ExitCode, InvalidError, LimitError, UsageError
from podmgr.extract import ImportLimits, parse_size
from podmgr.fetch.discovery import host_os_arch
from podmgr.store import Store
from podmgr.trust import TrustStore, UntrustedError

__all__ = ["keys"]
pytestmark = pytest.mark.unit

#: The bomb's uncompressed size; the tests lower the limit below it.
BOMB = 48 << 20


def bomb(path: Path, name: str = "example.com/bomb") -> Path:
    """A valid image whose one file is BOMB bytes of zeros: about 50 KiB of gzip."""
    man = MANIFEST.replace(b"example.com/test", name.encode())
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(tar_of(entry("manifest", data=man), entry("rootfs", tarfile.DIRTYPE))[:-1024])
        ti = tarfile.TarInfo("rootfs/zeros")
        ti.size = BOMB
        gz.write(ti.tobuf(format=tarfile.PAX_FORMAT))
        chunk = bytes(1 << 20)
        for _ in range(BOMB >> 20):
            gz.write(chunk)
        gz.write(bytes(1024))  # end-of-archive
    path.write_bytes(buf.getvalue())
    return path


def podmgr(state: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "podmgr", "--dir", str(state), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def assert_store_works(state: Path, tmp: Path) -> None:
    cas = state / "cas"
    assert list((cas / "tmp").iterdir()) == []
    assert list((cas / "trees").iterdir()) == [] or (cas / "index.db").exists()
    db = sqlite3.connect(cas / "index.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    good, iid = build_image(tmp / "good.aci", manifest("example.com/good"), {"x": "1"})
    p = podmgr(state, "fetch", "--insecure-options=image", str(good))
    assert p.returncode == 0 and p.stdout.strip() == iid, p.stderr
    p = podmgr(state, "image", "list")
    assert p.returncode == 0 and "example.com/good" in p.stdout, p.stderr


def one_error(p: Any) -> str:
    errors = [line for line in p.stderr.splitlines() if line.startswith("podmgr: error:")]
    assert len(errors) == 1, p.stderr
    assert "internal error" not in p.stderr
    return errors[0]


def test_the_bomb_is_valid_and_small(tmp_path: Path) -> None:
    b = bomb(tmp_path / "b.aci")
    assert b.stat().st_size < 1 << 20
    assert aci.validate(b).uncompressed_size > BOMB


def test_a_bomb_stops_at_the_image_size_limit(tmp_path: Path) -> None:
    b = bomb(tmp_path / "b.aci")
    state = tmp_path / "state"
    p = podmgr(state, "fetch", "--insecure-options=image", str(b),
               env={"PODMGR_MAX_IMAGE_SIZE": "8M"})  # fmt: skip
    assert p.returncode == ExitCode.LIMIT == 10, p.stderr
    assert "larger than 8M uncompressed" in one_error(p)
    assert "PODMGR_MAX_IMAGE_SIZE" in p.stderr  # the hint names the knob
    assert podmgr(state, "image", "list", "--format=json").stdout.count('"id"') == 0
    assert_store_works(state, tmp_path)


def test_the_limit_stops_extraction_early(tmp_path: Path) -> None:
    s = Store.open(tmp_path / "state")
    s.limits = ImportLimits(max_image=4 << 20)
    written: list[int] = []
    real = os.write

    def counting(fd: int, data: Any) -> int:
        written.append(len(data))
        return real(fd, data)

    os.write = counting  # type: ignore[assignment]
    try:
        with pytest.raises(LimitError):
            s.add(bomb(tmp_path / "b.aci"))
    finally:
        os.write = real  # type: ignore[assignment]
    # The file being extracted got at most the limit plus one read of the decompressor.
    assert sum(written) <= (4 << 20) + (1 << 20) + 65536
    assert list(s.tmp.iterdir()) == [] and s.images() == []
    s.close()


def test_archive_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    good, _ = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "y" * 5000})
    state = tmp_path / "state"
    p = podmgr(state, "fetch", "--insecure-options=image", str(good),
               env={"PODMGR_MAX_ARCHIVE_SIZE": "100"})  # fmt: skip
    assert p.returncode == 10 and "archive is larger than 100 bytes" in one_error(p)
    p = podmgr(state, "fetch", "--insecure-options=image", str(good),
               env={"PODMGR_MAX_ARCHIVE_SIZE": "0"})  # fmt: skip
    assert p.returncode == 0, p.stderr


def test_the_free_space_reserve(tmp_path: Path) -> None:
    good, _ = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    state = tmp_path / "state"
    for reserve in ("1000T", "99%"):
        p = podmgr(state, "fetch", "--insecure-options=image", str(good),
                   env={"PODMGR_STORE_RESERVE": reserve})  # fmt: skip
        assert p.returncode == 10, p.stderr
        assert "not enough free" in one_error(p) and "PODMGR_STORE_RESERVE" in p.stderr
        assert list((state / "cas/tmp").iterdir()) == []
    p = podmgr(state, "fetch", "--insecure-options=image", str(good),
               env={"PODMGR_STORE_RESERVE": "lots"})  # fmt: skip
    assert p.returncode == 2 and "PODMGR_STORE_RESERVE='lots' is not a size" in one_error(p)
    assert_store_works(state, tmp_path)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("123", 123), ("4K", 4096), ("512M", 512 << 20), ("8G", 8 << 30),
     ("2GiB", 2 << 30), ("1t", 1 << 40), (" 7 ", 7)],
)  # fmt: skip
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text, "X") == value


@pytest.mark.parametrize("text", ["", "-1", "1.5G", "G", "8X", "1e9", "٣", "9" * 30, "100%"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_size(text, "X")
    with pytest.raises(UsageError):
        ImportLimits.from_env({"PODMGR_MAX_IMAGE_SIZE": text or "x"})


@pytest.mark.parametrize("text", ["100%", "-1%", "x%", "%"])
def test_bad_reserve_percentages(text: str) -> None:
    with pytest.raises(UsageError):
        ImportLimits(reserve=text)


# -- signatures before the first image byte -----------------------------------------------


def forbid(monkeypatch: pytest.MonkeyPatch, what: str) -> list[str]:
    """Fail the test at the first attempt to read an image archive ("read"), or to
    import it (anything beyond reading its manifest: "extract")."""
    reads: list[str] = []

    def refuse(src: object, *a: object, **kw: object) -> Any:
        reads.append(str(src))
        raise AssertionError(f"the image was read: {src}")

    if what == "read":
        monkeypatch.setattr(aci, "open_tar_stream", refuse)
    else:
        monkeypatch.setattr(Store, "add", refuse)
    return reads


def fetch(store: Store, trust: Path, ref: str, **kw: Any) -> Any:
    cfg = imagefetch.FetchConfig(trust=TrustStore(trust, None), **kw)
    return imagefetch.fetch([ref], store=store, options=cfg)


@pytest.mark.parametrize(
    ("signer", "trusted", "reason", "before"),
    [
        (None, None, "no signature", "read"),
        ("other", ("ed", None), "untrusted key", "read"),
        ("other", None, "untrusted key", "read"),  # an empty trust store
        ("other", ("sub", "example.com"), "untrusted key", "read"),  # gpg asked for subkeys
        # Which prefix an image is under is its manifest's name: read, not extracted.
        ("ed", ("ed", "example.org"), "trusted only for prefix example.org", "extract"),
    ],
    ids=["missing", "unknown-key", "no-keys", "not-a-subkey", "other-prefix"],
)
def test_a_signature_that_cannot_pass_is_refused_before_any_image_byte(
    tmp_path: Path,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
    signer: str | None,
    trusted: tuple[str, str | None] | None,
    reason: str,
    before: str,
) -> None:
    reads = forbid(monkeypatch, before)
    b = bomb(tmp_path / "b.aci")
    if signer is not None:
        keys.sign(signer, b)
    admin = tmp_path / "trust"
    admin.mkdir()
    if trusted is not None:
        write_key(admin, keys, *trusted)
    with Store.open(tmp_path / "state") as s:
        with pytest.raises(UntrustedError, match=reason):
            fetch(s, admin, str(b))
        assert reads == []
        assert list(s.tmp.iterdir()) == [] and s.images() == []


def test_a_bomb_signed_by_a_trusted_key_still_stops_at_the_limit(
    tmp_path: Path, keys: Keys
) -> None:
    b = bomb(tmp_path / "b.aci")
    keys.sign("sub", b)  # by a signing subkey: screened through gpg, and passes
    admin = tmp_path / "trust"
    write_key(admin, keys, "sub", "example.com")
    with Store.open(tmp_path / "state") as s:
        s.limits = ImportLimits(max_image=8 << 20)
        with pytest.raises(LimitError):
            fetch(s, admin, str(b))
        assert list(s.tmp.iterdir()) == [] and s.images() == []
        s.limits = ImportLimits()
        info = fetch(s, admin, str(b)).images[0]
        assert info.verified and info.fingerprint == keys.fpr["sub"]


# -- downloads --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
def test_a_download_stops_at_the_archive_limit(tmp_path: Path, pki: PKI, length: bool) -> None:
    os_, arch = host_os_arch()
    data = os.urandom(256 << 10)
    path = f"/images/big-latest-{os_}-{arch}.aci"

    def unsized(h: Any) -> None:
        # No Content-Length: the body ends when the connection closes.
        h.send_response(200)
        h.end_headers()
        h.wfile.write(data)
        h.close_connection = True

    routes = {path: Blob(data) if length else unsized}
    with serve(routes, tls=pki.server_context()) as server:  # type: ignore[arg-type]
        state = tmp_path / "state"
        env = {
            "SSL_CERT_FILE": str(pki.ca),
            "PODMGR_CONNECT_TO": f"example.com=127.0.0.1:{server.port}",
            "PODMGR_MAX_ARCHIVE_SIZE": "64K",
            "PODMGR_TRUST_DIR": str(tmp_path / "trust"),
        }
        p = podmgr(state, "fetch", "--insecure-options=image", "https://example.com" + path,
                   env=env)  # fmt: skip
    assert p.returncode == 10, p.stderr
    assert "larger than 64K" in one_error(p)
    assert list((state / "cas/downloads").iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_a_hostile_signature_file_is_refused_without_hanging(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    reads = forbid(monkeypatch, "read")
    good, _ = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    sig = tmp_path / "a.aci.asc"
    if kind == "fifo":
        os.mkfifo(sig)  # no writer: a blocking open would hang
    elif kind == "dev-zero":
        sig.symlink_to("/dev/zero")
    else:
        with open(sig, "wb") as f:
            f.truncate(2 << 20)
    admin = tmp_path / "trust"
    write_key(admin, keys, "ed")
    with Store.open(tmp_path / "state") as s:
        # fetch.file refuses a signature path that is no regular file; the trust
        # module, reading it, does too (and bounds its size).
        with pytest.raises((InvalidError, UntrustedError)) as info:
            fetch(s, admin, str(good))
        assert "regular file" in info.value.message or "larger than" in info.value.message
    assert reads == []


def test_key_fingerprints_match_gpg(keys: Keys) -> None:
    from podmgr.openpgp import key_fingerprints

    for name, fpr in keys.fpr.items():
        fprs = key_fingerprints(keys.public(name))
        assert fprs is not None and fpr in fprs, name
    assert keys.subkey["sub"] in (key_fingerprints(keys.public("sub")) or set())
    assert key_fingerprints(b"not a key") is None


def test_screening_a_subkey_signature_needs_no_gpg(
    tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from podmgr import trust

    image = tmp_path / "x.aci"
    image.write_bytes(b"x")
    sig = keys.sign("sub", image)
    admin = tmp_path / "trust"
    write_key(admin, keys, "sub", "example.com")
    write_key(admin, keys, "ed", "example.com")

    def no_gpg() -> None:
        raise AssertionError("gpg was started")

    store = TrustStore(admin, None)
    with monkeypatch.context() as m:
        m.setattr(trust, "GnupgHome", no_gpg)
        trust.screen(sig, "x.aci", store=store)
        trust.screen(sig, "x.aci", store=store, name="example.com/x")
    # A refusal may ask gpg, to explain which key it was.
    with pytest.raises(UntrustedError, match=r"trusted only for prefix example\.com"):
        trust.screen(sig, "x.aci", store=store, name="example.org/x")
    keys.sign("other", image)
    with pytest.raises(UntrustedError, match="untrusted key"):
        trust.screen(sig, "x.aci", store=store)
