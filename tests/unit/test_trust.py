"""podmgr.trust: signature verification and the trust store, with real gpg and sqv."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from test_trust_keys import Keys, keys, write_key

from podmgr.errors import ExitCode, InvalidError, NotFoundError
from podmgr.openpgp import dearmor, parse_signatures
from podmgr.trust import (
    Reason,
    TrustStore,
    UntrustedError,
    escape_prefix,
    inspect_key,
    prefix_matches,
    verify,
    verifying,
)

__all__ = ["keys"]  # the session fixture, imported so that pytest finds it here

NAME = "example.com/app"


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "etc", tmp_path / "vendor")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "app-1.0.0.aci"
    p.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 64)
    return p


def refusal(image: Path, sig: Path | None, name: str, store: TrustStore) -> UntrustedError:
    with pytest.raises(UntrustedError) as e:
        verify(image, sig, name, store=store)
    err = e.value
    assert err.exit_code == ExitCode.FAILURE
    assert name in err.message
    assert "\n" not in err.message
    return err


# -- prefixes


@pytest.mark.parametrize(
    ("prefix", "name", "match"),
    [
        ("example.com/app", "example.com/app", True),
        ("example.com/app", "example.com/app/worker", True),
        ("example.com/app", "example.com/apple", False),
        ("example.com", "example.com/apple", True),
        ("example.com", "example.community/x", False),
    ],
)
def test_prefix_matches_on_a_path_boundary(prefix: str, name: str, match: bool) -> None:
    assert prefix_matches(prefix, name) is match


def test_prefix_escape_is_rkts() -> None:
    assert escape_prefix("example.com/app/") == "example.com,app"
    with pytest.raises(InvalidError):
        escape_prefix("Example.com/../x")


# -- accepted signatures


@pytest.mark.parametrize("signer", ["ed", "rsa"])
def test_root_key_verifies_any_name(
    keys: Keys, store: TrustStore, image: Path, signer: str
) -> None:
    store.add(keys.public(signer), None)
    v = verify(image, keys.sign(signer, image), NAME, store=store)
    assert v.fingerprint == keys.fpr[signer]
    assert v.signing_fingerprint == keys.fpr[signer]
    assert v.uids == [f"{signer} <{signer}@example.com>"]


@pytest.mark.parametrize("name", ["example.com/app", "example.com/app/worker"])
def test_prefix_key_verifies_names_under_it(
    keys: Keys, store: TrustStore, image: Path, name: str
) -> None:
    added = store.add(keys.public("ed"), "example.com/app")
    assert added.path == store.admin_dir / "prefix.d" / "example.com,app" / keys.fpr["ed"]
    assert verify(image, keys.sign("ed", image), name, store=store).fingerprint == keys.fpr["ed"]


def test_signing_subkey_is_trusted_through_its_primary(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    store.add(keys.public("sub"), NAME)
    v = verify(image, keys.sign("sub", image), NAME, store=store)
    assert v.fingerprint == keys.fpr["sub"]
    assert v.signing_fingerprint == keys.subkey["sub"]


def test_vendor_key_is_trusted(keys: Keys, store: TrustStore, image: Path) -> None:
    assert store.vendor_dir is not None
    write_key(store.vendor_dir, keys, "vendor", NAME)
    v = verify(image, keys.sign("vendor", image), NAME, store=store)
    assert v.fingerprint == keys.fpr["vendor"]


# -- refusals, each naming its reason


def test_missing_signature(keys: Keys, store: TrustStore, image: Path) -> None:
    store.add(keys.public("ed"), None)
    for sig in (None, image.with_suffix(".asc")):
        err = refusal(image, sig, NAME, store)
        assert err.reason is Reason.MISSING
        assert "no signature" in err.message


def test_tampered_image_is_a_bad_signature(keys: Keys, store: TrustStore, image: Path) -> None:
    store.add(keys.public("ed"), None)
    sig = keys.sign("ed", image)
    image.write_bytes(image.read_bytes()[:-1] + b"X")
    err = refusal(image, sig, NAME, store)
    assert err.reason is Reason.BAD_SIGNATURE
    assert "bad signature" in err.message


def test_signature_of_another_file_is_a_bad_signature(
    keys: Keys, store: TrustStore, image: Path, tmp_path: Path
) -> None:
    store.add(keys.public("rsa"), None)
    other = tmp_path / "other.aci"
    other.write_bytes(b"another image")
    err = refusal(image, keys.sign("rsa", other), NAME, store)
    assert err.reason is Reason.BAD_SIGNATURE


def test_untrusted_key_is_named_with_a_hint(keys: Keys, store: TrustStore, image: Path) -> None:
    store.add(keys.public("ed"), None)
    err = refusal(image, keys.sign("other", image), NAME, store)
    assert err.reason is Reason.UNTRUSTED_KEY
    assert keys.fpr["other"] in err.message
    assert err.fingerprint == keys.fpr["other"]
    assert err.hint is not None and f"podmgr trust --prefix {NAME}" in err.hint


def test_empty_store_refuses(keys: Keys, store: TrustStore, image: Path) -> None:
    err = refusal(image, keys.sign("ed", image), NAME, store)
    assert err.reason is Reason.UNTRUSTED_KEY


def test_key_for_another_prefix_is_refused(keys: Keys, store: TrustStore, image: Path) -> None:
    store.add(keys.public("ed"), "example.com/app")
    err = refusal(image, keys.sign("ed", image), "example.com/apple", store)
    assert err.reason is Reason.OTHER_PREFIX
    assert keys.fpr["ed"] in err.message
    assert "trusted only for prefix example.com/app," in err.message


def test_subkey_for_another_prefix_names_the_primary(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    store.add(keys.public("sub"), "example.org")
    err = refusal(image, keys.sign("sub", image), NAME, store)
    assert err.reason is Reason.OTHER_PREFIX
    assert err.fingerprint == keys.fpr["sub"]


@pytest.mark.parametrize("signer", ["expired", "subexp"])
def test_expired_key(keys: Keys, store: TrustStore, image: Path, signer: str) -> None:
    """The primary key, or its signing subkey (subexp), expired after signing in 2020:
    sqv accepts that (the key was valid when it signed); podmgr, as gpgv did, judges
    the key now."""
    write_key(store.admin_dir, keys, signer)
    err = refusal(image, keys.sign(signer, image), NAME, store)
    assert err.reason is Reason.EXPIRED
    assert f"expired key {keys.fpr[signer]}" in err.message


@pytest.mark.parametrize("signer", ["revoked", "subrev"])
def test_revoked_key(keys: Keys, store: TrustStore, image: Path, signer: str) -> None:
    # Trusted before the revocation (of the key, or of its signing subkey); the store
    # now holds the updated key.
    write_key(store.admin_dir, keys, signer, NAME)
    err = refusal(image, keys.sign(signer, image), NAME, store)
    assert err.reason is Reason.REVOKED
    assert f"revoked key {keys.fpr[signer]}" in err.message


def test_tampered_image_by_an_expired_key_is_a_bad_signature(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    write_key(store.admin_dir, keys, "expired")
    sig = keys.sign("expired", image)
    image.write_bytes(b"X" + image.read_bytes()[1:])
    assert refusal(image, sig, NAME, store).reason is Reason.BAD_SIGNATURE


def test_weak_digest_is_refused_but_not_as_a_bad_signature(
    keys: Keys, store: TrustStore, image: Path, tmp_path: Path
) -> None:
    """sqv's policy refuses SHA-1: the image is not called modified, and sqv's reason
    is passed on."""
    store.add(keys.public("rsa"), None)
    sig = tmp_path / "sha1.asc"
    keys.gpg("--armor", "--detach-sign", "--digest-algo", "SHA1", "-u", keys.fpr["rsa"],
             "-o", str(sig), str(image))  # fmt: skip
    err = refusal(image, sig, NAME, store)
    assert err.reason is Reason.UNVERIFIED
    assert f"signature by {keys.fpr['rsa']} could not be verified: " in err.message
    assert "bad signature" not in err.message


def test_text_mode_signature_is_refused_before_any_byte(
    keys: Keys, store: TrustStore, image: Path, tmp_path: Path
) -> None:
    store.add(keys.public("ed"), None)
    sig = tmp_path / "text.asc"
    keys.gpg("--armor", "--textmode", "--detach-sign", "-u", keys.fpr["ed"], "-o", str(sig),
             str(image))  # fmt: skip
    with pytest.raises(UntrustedError) as e, verifying(sig, NAME, store=store):
        pass
    assert e.value.reason is Reason.UNVERIFIED
    assert "type 0x01" in e.value.message


def test_one_good_signature_among_several_is_enough(
    keys: Keys, store: TrustStore, image: Path, tmp_path: Path
) -> None:
    store.add(keys.public("sub"), NAME)
    sig = tmp_path / "two.asc"
    keys.gpg("--armor", "--detach-sign", "-u", keys.fpr["other"], "-u", keys.subkey["sub"] + "!",
             "-o", str(sig), str(image))  # fmt: skip
    assert len(parse_signatures(dearmor(sig.read_bytes(), "SIGNATURE")[0])) == 2
    v = verify(image, sig, NAME, store=store)
    assert (v.fingerprint, v.signing_fingerprint) == (keys.fpr["sub"], keys.subkey["sub"])


def test_key_trusted_for_root_and_a_prefix_verifies(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    store.add(keys.public("ed"), None)
    store.add(keys.public("ed"), NAME)
    assert len(store.keys_for(NAME)) == 2
    assert verify(image, keys.sign("ed", image), NAME, store=store).fingerprint == keys.fpr["ed"]


def _armor(data: bytes, label: str) -> bytes:
    body = base64.b64encode(data).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN PGP {label}-----", "", *lines, f"-----END PGP {label}-----",
                      ""]).encode()  # fmt: skip


def test_signature_packets_name_their_issuer(keys: Keys, image: Path) -> None:
    sig = keys.sign("sub", image)
    (info,) = parse_signatures(dearmor(sig.read_bytes(), "SIGNATURE")[0])
    assert (info.version, info.sig_type) == (4, 0)
    assert info.issuer_fingerprint == keys.subkey["sub"]
    assert info.issuer_key_id == keys.subkey["sub"][-16:]
    assert info.issued_by(keys.subkey["sub"]) and not info.issued_by(keys.fpr["sub"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("key", "not a detached signature"),
        ("junk", "bad packet header"),
        ("cut", "truncated"),
    ],
)
def test_armoured_non_signatures_are_malformed(
    keys: Keys, store: TrustStore, image: Path, tmp_path: Path, content: str, message: str
) -> None:
    store.add(keys.public("ed"), None)
    packets = {
        "key": lambda: dearmor(keys.public("ed"), "PUBLIC KEY BLOCK")[0],
        "junk": lambda: b"hello world",
        "cut": lambda: dearmor(keys.sign("ed", image).read_bytes(), "SIGNATURE")[0][:-3],
    }[content]()
    bad = tmp_path / "bad.asc"
    bad.write_bytes(_armor(packets, "SIGNATURE"))
    err = refusal(image, bad, NAME, store)
    assert err.reason is Reason.MALFORMED
    assert message in err.message


def test_unreadable_key_file_does_not_block_sqvs_keyring(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    """Well-formed armour around something that is no key: sqv refuses a whole keyring
    that holds it, so it is left out."""
    store.add(keys.public("ed"), None)
    junk = store.admin_dir / "root.d" / keys.fpr["other"]
    junk.write_bytes(_armor(b"\x99\x00\x01not a key", "PUBLIC KEY BLOCK"))
    assert verify(image, keys.sign("ed", image), NAME, store=store).fingerprint == keys.fpr["ed"]


def test_key_file_named_after_another_key_is_not_trusted(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    wrong = store.admin_dir / "root.d" / keys.fpr["ed"]
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(keys.public("other"))
    err = refusal(image, keys.sign("other", image), NAME, store)
    assert err.reason is Reason.UNTRUSTED_KEY
    assert err.fingerprint == keys.fpr["other"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "checksum", "binary"])
def test_malformed_armour(
    keys: Keys, store: TrustStore, image: Path, tmp_path: Path, damage: str
) -> None:
    store.add(keys.public("ed"), None)
    sig = keys.sign("ed", image)
    text = sig.read_bytes()
    bad = tmp_path / "bad.asc"
    if damage == "garbage":
        bad.write_bytes(b"not a signature\n")
    elif damage == "truncated":
        bad.write_bytes(text[: len(text) // 2])
    elif damage == "checksum":
        lines = text.splitlines(keepends=True)
        body = next(i for i, line in enumerate(lines) if line.startswith(b"iH") or i > 2)
        line = bytearray(lines[body])
        line[4] = ord("A") if line[4] != ord("A") else ord("B")
        lines[body] = bytes(line)
        bad.write_bytes(b"".join(lines))
    else:
        sig_bin = tmp_path / "bin.sig"
        keys.gpg("--detach-sign", "-u", keys.fpr["ed"], "-o", str(sig_bin), str(image))
        bad = sig_bin
    err = refusal(image, bad, NAME, store)
    assert err.reason is Reason.MALFORMED
    assert "malformed signature" in err.message


def test_masked_vendor_key_is_refused(keys: Keys, store: TrustStore, image: Path) -> None:
    assert store.vendor_dir is not None
    path = write_key(store.vendor_dir, keys, "vendor", NAME)
    mask = store.admin_dir / path.relative_to(store.vendor_dir)
    mask.parent.mkdir(parents=True)
    mask.touch()
    assert store.keys_for(NAME) == []
    err = refusal(image, keys.sign("vendor", image), NAME, store)
    assert err.reason is Reason.UNTRUSTED_KEY
    assert "masked" in err.message


def test_broken_store_file_does_not_block_other_keys(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    store.add(keys.public("ed"), None)
    broken = store.admin_dir / "root.d" / keys.fpr["other"]
    broken.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n")
    assert verify(image, keys.sign("ed", image), NAME, store=store).fingerprint == keys.fpr["ed"]


# -- the store


def test_add_stores_armour_named_by_fingerprint(keys: Keys, store: TrustStore) -> None:
    k = store.add(keys.public("rsa", armor=False), None)
    assert k.path == store.admin_dir / "root.d" / keys.fpr["rsa"]
    assert k.path.read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert k.uids == ["rsa <rsa@example.com>"]


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("two", "holds 2 keys"),
        ("secret", "secret key"),
        ("nothing", "no OpenPGP public key"),
        ("revoked", "is revoked"),
        ("expired", "has expired"),
    ],
)
def test_add_refuses_bad_key_files(keys: Keys, store: TrustStore, what: str, message: str) -> None:
    data = {
        "two": lambda: keys.public("ed") + keys.public("rsa"),
        "secret": lambda: keys.secret("ed"),
        "nothing": lambda: b"hello\n",
        "revoked": lambda: keys.public("revoked"),
        "expired": lambda: keys.public("expired"),
    }[what]()
    with pytest.raises(InvalidError, match=message):
        store.add(data, None)
    assert not store.admin_dir.exists() or not any(store.admin_dir.rglob("*/*"))


def test_inspect_key_lists_uids_and_subkeys(keys: Keys) -> None:
    info, armored = inspect_key(keys.public("sub"))
    assert info.fingerprint == keys.fpr["sub"]
    assert info.subkeys == [keys.subkey["sub"]]
    assert info.uids == ["sub <sub@example.com>"]
    assert "PRIVATE" not in armored


def test_list_and_remove(keys: Keys, store: TrustStore) -> None:
    assert store.vendor_dir is not None
    store.add(keys.public("ed"), None)
    store.add(keys.public("rsa"), "example.com/app")
    write_key(store.vendor_dir, keys, "vendor", "example.org")
    listed = {(k.fingerprint, k.prefix, k.origin) for k in store.list().keys}
    assert listed == {
        (keys.fpr["ed"], None, "admin"),
        (keys.fpr["rsa"], "example.com/app", "admin"),
        (keys.fpr["vendor"], "example.org", "vendor"),
    }
    assert "ed <ed@example.com>" in store.list().text()

    change = store.remove(keys.fpr["rsa"].lower())
    assert [k.fingerprint for k in change.removed] == [keys.fpr["rsa"]]
    change = store.remove(keys.fpr["vendor"])
    assert [k.fingerprint for k in change.masked] == [keys.fpr["vendor"]]
    mask = store.admin_dir / "prefix.d" / "example.org" / keys.fpr["vendor"]
    assert mask.stat().st_size == 0
    assert {k.fingerprint for k in store.list().keys} == {keys.fpr["ed"]}
    with pytest.raises(NotFoundError):
        store.remove(keys.fpr["vendor"])


def test_adding_a_masked_vendor_key_unmasks_it(keys: Keys, store: TrustStore) -> None:
    assert store.vendor_dir is not None
    write_key(store.vendor_dir, keys, "vendor")
    store.remove(keys.fpr["vendor"])
    assert store.keys_for(NAME) == []
    store.add(keys.public("vendor"), None)
    assert [k.origin for k in store.keys_for(NAME)] == ["admin"]


# -- the streamed check (what fetching feeds during its import pass)


def test_streamed_in_uneven_pieces_verifies(keys: Keys, store: TrustStore, image: Path) -> None:
    store.add(keys.public("rsa"), None)
    sig = keys.sign("rsa", image)
    data = image.read_bytes()  # 16 KiB: pieces of 7 bytes, then the rest at once
    with verifying(sig, NAME, store=store) as check:
        for i in range(0, 7000, 7):
            check.write(data[i : i + 7])
        check.write(data[7000:])
        assert check.fed == len(data)
        assert check.result().fingerprint == keys.fpr["rsa"]
        assert check.done and check.result().fingerprint == keys.fpr["rsa"]


def test_streamed_short_input_is_a_bad_signature(
    keys: Keys, store: TrustStore, image: Path
) -> None:
    store.add(keys.public("ed"), None)
    sig = keys.sign("ed", image)
    with verifying(sig, NAME, store=store) as check:
        check.write(image.read_bytes()[:-1])
        with pytest.raises(UntrustedError) as e:
            check.result()
        assert e.value.reason is Reason.BAD_SIGNATURE
        with pytest.raises(UntrustedError):  # the verdict is kept
            check.result()


def test_streamed_check_refuses_before_any_byte(store: TrustStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad.asc"
    bad.write_text("-----BEGIN PGP SIGNATURE-----\n\n!!!\n-----END PGP SIGNATURE-----\n")
    with pytest.raises(UntrustedError) as e, verifying(bad, NAME, store=store):
        pass
    assert e.value.reason is Reason.MALFORMED


def test_abandoned_streamed_check_ends_sqv(
    keys: Keys, store: TrustStore, image: Path, tmp_path: Path
) -> None:
    """Leaving the block without a verdict (an import that failed) does not hang, even
    with more queued than the pipe holds, and leaves no sqv running."""
    store.add(keys.public("ed"), None)
    big = tmp_path / "big"
    big.write_bytes(bytes(40 << 20))
    with pytest.raises(RuntimeError), verifying(keys.sign("ed", big), NAME, store=store) as check:
        for _ in range(30):
            check.write(bytes(1 << 20))
        sqv = check._sqv
        raise RuntimeError("import failed")
    assert not sqv.is_alive()


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "huge"])
def test_verify_reads_only_a_small_regular_signature_file(tmp_path: Path, kind: str) -> None:
    # trust.verify is called with any path (not only through fetch.file's checks).
    import os

    from podmgr.trust import TrustStore, UntrustedError, verify

    sig = tmp_path / "x.asc"
    if kind == "fifo":
        os.mkfifo(sig)
    elif kind == "dev-zero":
        sig.symlink_to("/dev/zero")
    else:
        with open(sig, "wb") as f:
            f.truncate(2 << 20)
    image = tmp_path / "x.aci"
    image.write_bytes(b"x")
    with pytest.raises(UntrustedError, match="malformed signature"):
        verify(image, sig, "example.com/x", store=TrustStore(tmp_path / "t", None))
