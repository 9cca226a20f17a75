"""Names podmgr derives: UUIDs, the apps' overlay options, and metadata tokens."""

from __future__ import annotations

import os
import uuid as uuidlib
from pathlib import Path

import pytest

from podmgr import names, rootfs

pytestmark = pytest.mark.unit


def test_new_uuids_are_random_version_4_uuids() -> None:
    made = {names.new_uuid() for _ in range(1000)}
    assert len(made) == 1000
    for u in made:
        parsed = uuidlib.UUID(u)
        assert str(parsed) == u
        assert parsed.version == 4 and parsed.variant == uuidlib.RFC_4122


def test_overlay_options_list_lower_layers_top_first() -> None:
    opts = rootfs.overlay_options(["/base", "/top"], "/a/upper", "/a/work")
    assert opts == "lowerdir=/top:/base,upperdir=/a/upper,workdir=/a/work"


def test_unmounting_what_is_not_mounted_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "rootfs").mkdir()
    rootfs.unmount_roots([str(tmp_path / "rootfs"), str(tmp_path / "gone")])
    assert (tmp_path / "rootfs").is_dir()


def test_metadata_tokens_are_urlsafe_base64_of_192_bits() -> None:
    """tokens.new_token spells what secrets.token_urlsafe(24) would: 32 URL-safe
    characters, distinct every time, and the index accepts them."""
    import base64

    from podmgr import tokens

    made = {tokens.new_token() for _ in range(200)}
    assert len(made) == 200
    for t in made:
        assert len(t) == 32 and tokens.is_token(t), t
        assert len(base64.urlsafe_b64decode(t)) == 24


def test_a_token_is_what_the_url_safe_pattern_matches() -> None:
    """tokens.is_token (no regular expression on the start-up path) says what
    ``[A-Za-z0-9_-]{22,128}`` matches, for random strings of those characters and others."""
    import random
    import re

    from podmgr import tokens

    rng = random.Random(5)
    valid = "abcXYZ0189-_"
    others = "+/=. \u00e9\n\x00\u0663\uff5a"  # the last two: isalnum() outside ASCII
    samples = ["-" * 22, "_" * 128, "a" * 21, "a" * 129, "", "a" * 22 + "\n"]
    for _ in range(3000):
        text = "".join(rng.choices(valid, k=rng.randrange(0, 140)))
        if text and rng.random() < 0.5:
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice(others) + text[i + 1 :]
        samples.append(text)
    for text in samples:
        assert tokens.is_token(text) == bool(re.fullmatch(r"[A-Za-z0-9_-]{22,128}", text)), text


def test_the_token_index_links_a_token_to_its_pod(tmp_path: Path) -> None:
    from podmgr import tokens
    from podmgr.errors import InvalidError

    t = tokens.new_token()
    tokens.register(tmp_path, "u1", t)
    tokens.register(tmp_path, "u1", t)  # idempotent
    assert os.readlink(tokens.tokens_dir(tmp_path) / t) == "u1"
    with pytest.raises(InvalidError):
        tokens.register(tmp_path, "u2", t)
    with pytest.raises(InvalidError):
        tokens.register(tmp_path, "u1", "../escape")
    tokens.unregister(tmp_path, t)
    tokens.unregister(tmp_path, t)
    assert not (tokens.tokens_dir(tmp_path) / t).exists()
