"""Property-based tests of what parses hostile input (issue 18): manifests, app strings
and image archives. Whatever hypothesis makes, the outcome is a result or one of
podmgr's own errors, and extraction writes nothing outside its target."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aci_util import MANIFEST
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podmgr import aci, schema
from podmgr.errors import PodmgrError
from podmgr.fetch.appstring import parse_app_string

pytestmark = pytest.mark.unit

#: Bounded in examples and time: a property test must not make the suite slow. The
#: deadline only stops one pathological example from running away; it asserts nothing
#: about speed (a slow machine gets a generous one).
BOUNDED = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- manifests ------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
_KEYS = ["name", "labels", "app", "annotations", "dependencies",
         "pathWhitelist", "apps", "volumes", "isolators", "ports", "exec", "user", "group",
         "environment", "mountPoints", "value", "id", "image", "imageName", "imageID"]  # fmt: skip
_near = st.fixed_dictionaries(
    {
        "acKind": st.sampled_from(["ImageManifest", "PodManifest", "ImageManifest\n", ""]),
        "acVersion": st.sampled_from(["0.8.11", "0.8.11\n", "1.0.0", "x"]),
    },
    optional={
        k: st.one_of(_json, st.text(max_size=30), st.lists(_json, max_size=3)) for k in _KEYS
    },
)


def _parse(data: bytes | str) -> None:
    try:
        schema.parse_manifest(data)
    except PodmgrError as e:
        assert e.message and "\n" not in e.message


@BOUNDED
@given(doc=_near)
def test_manifest_like_documents(doc: dict[str, Any]) -> None:
    _parse(json.dumps(doc))


@BOUNDED
@given(raw=st.binary(max_size=300))
def test_manifest_bytes(raw: bytes) -> None:
    _parse(raw)


@BOUNDED
@given(
    pos=st.integers(0, len(MANIFEST)),
    junk=st.sampled_from(["\n", "\x00", "[", "{", '"', ",", "}", "]", '"name": "x",', "\ud800"]),
    times=st.integers(1, 3000),
)
def test_manifest_mutations(pos: int, junk: str, times: int) -> None:
    text = MANIFEST.decode()
    _parse(text[:pos] + junk * times + text[pos:])


@BOUNDED
@given(ref=st.text(max_size=60))
def test_app_strings(ref: str) -> None:
    with contextlib.suppress(PodmgrError):
        app = parse_app_string(ref)
        assert "\n" not in app.name and schema.is_ac_identifier(app.name)


# -- archives ---------------------------------------------------------------------------

_component = st.sampled_from(["a", "b", "..", ".", "", "etc", "x" * 255, "x" * 256, "é", "\x01"])
# Mostly plausible names, so that many archives pass and get extracted (links and nodes
# between real entries are where escapes would be), with hostile ones mixed in.
_plain = st.lists(st.sampled_from(["a", "b", "etc"]), min_size=1, max_size=4).map(
    lambda p: "rootfs/" + "/".join(p)
)
_name = st.one_of(
    *[_plain] * 12,
    st.lists(_component, min_size=1, max_size=6).map(lambda p: "rootfs/" + "/".join(p)),
    st.lists(_component, min_size=1, max_size=4).map("/".join),  # outside rootfs/
    st.integers(200, 320).map(lambda n: "rootfs/" + "d/" * n + "f"),  # around the depth limit
    st.sampled_from(["/etc/passwd", "rootfs/../../x", "manifest", "rootfs", "rootfs/"]),
)
_TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
          tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]  # fmt: skip
_target = st.one_of(
    _plain,
    _plain,
    _name,
    st.sampled_from(["/", "..", "../../../..", "/etc", "/proc/self/root", "rootfs/a", "a"]),
    st.text(max_size=40),
)


@st.composite
def _member(draw: st.DrawFn) -> tuple[tarfile.TarInfo, bytes | None]:
    ti = tarfile.TarInfo(draw(_name))
    ti.type = draw(st.sampled_from(_TYPES))
    ti.mode = draw(st.sampled_from([0o644, 0o755, 0o4755, 0o000, 0o7777]))
    ti.uid = ti.gid = draw(st.sampled_from([0, 1000, 65534]))
    if ti.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        ti.linkname = draw(_target)
    if ti.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        ti.devmajor, ti.devminor = draw(st.sampled_from([(1, 3), (1, 5), (8, 0), (0, 0)]))
    if ti.type == tarfile.REGTYPE:
        data = draw(st.binary(max_size=64))
        ti.size = len(data)
        return ti, data
    return ti, None


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _snapshot(top: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``top`` except ``skip``'s subtree: (mode, size)."""
    out = {}
    for d, dirs, files in os.walk(top):
        if Path(d) == skip or skip in Path(d).parents:
            dirs[:] = []
            continue
        for n in dirs + files:
            if Path(d, n) != skip:
                s = os.lstat(os.path.join(d, n))
                out[os.path.join(d, n)] = (s.st_mode, s.st_size)
    return out


def _below(dest: Path) -> None:
    """Nothing in ``dest`` is anything but a plain node inside it (links stay links)."""
    for d, dirs, files in os.walk(dest):  # os.walk does not follow symlinks to dirs
        for n in dirs + files:
            p = Path(d, n)
            # A link stays a link (it may point anywhere, even at itself); anything
            # else resolves inside dest.
            assert p.is_symlink() or p.resolve(strict=False).is_relative_to(dest)


@BOUNDED
@given(
    members=st.lists(_member(), max_size=12),
    prefix=st.sampled_from([True, True, True, False]),
)
def test_random_archives_extract_only_below_their_target(
    members: list[tuple[tarfile.TarInfo, bytes | None]], prefix: bool
) -> None:
    head: list[tuple[tarfile.TarInfo, bytes | None]] = []
    if prefix:  # a valid start, so that the random part is what gets judged
        m = tarfile.TarInfo("manifest")
        m.size = len(MANIFEST)
        r = tarfile.TarInfo("rootfs")
        r.type, r.mode = tarfile.DIRTYPE, 0o755
        head = [(m, MANIFEST), (r, None)]
    data = _tar(head + members)
    with tempfile.TemporaryDirectory() as t:
        top = Path(t)
        (top / "outside").mkdir()
        (top / "outside" / "keep").write_text("x")
        dest = top / "dest"
        before = _snapshot(top, dest)
        try:
            aci.import_stream(io.BytesIO(data), dest)
        except PodmgrError as e:
            assert e.message and not dest.exists()
        else:
            _below(dest)
        assert _snapshot(top, dest) == before
        with contextlib.suppress(PodmgrError):
            aci.validate(io.BytesIO(data))
        # Extraction may leave read-only directories; removal copes.
        from podmgr.fsutil import rmtree

        rmtree(dest)


@BOUNDED
@given(
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 10_000),
    compress=st.booleans(),
)
def test_corrupted_archives(flips: list[tuple[int, int]], cut: int, compress: bool) -> None:
    import gzip

    m = tarfile.TarInfo("manifest")
    m.size = len(MANIFEST)
    d = tarfile.TarInfo("rootfs/d")
    d.type = tarfile.DIRTYPE
    f = tarfile.TarInfo("rootfs/d/f")
    f.size = 100
    raw = bytearray(_tar([(m, MANIFEST), (d, None), (f, b"y" * 100)]))
    if compress:
        raw = bytearray(gzip.compress(bytes(raw)))
    for pos, val in flips:
        raw[pos % len(raw)] = val
    data = bytes(raw[: max(cut, len(raw) // 2)])
    with tempfile.TemporaryDirectory() as t:
        try:
            aci.import_stream(io.BytesIO(data), Path(t) / "dest")
        except PodmgrError as e:
            assert e.message
        assert os.listdir(t) in ([], ["dest"])
