"""The image store: concurrency, crash safety (kill -9 in a loop), pins and gc, migrations."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from store_util import build_image, dep, manifest

from podmgr.errors import ConflictError, NotFoundError, PodmgrError, UsageError
from podmgr.store import MIGRATIONS, SCHEMA_VERSION, Store


def podmgr(state: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podmgr", "--dir", str(state), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        **kw,  # type: ignore[call-overload]
    )


def big_files(n: int = 400, size: int = 8192, large: int = 0, p: str = "f") -> dict[str, bytes]:
    rnd = random.Random(n)
    files = {f"d{i % 20}/{p}{i}": rnd.randbytes(size) for i in range(n)}
    if large:
        files["large"] = rnd.randbytes(large)
    return files


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


def check_invariants(state: Path) -> None:
    """Nothing visible is partial: every indexed image has its whole blob, every tree
    directory is complete."""
    cas = state / "cas"
    db = sqlite3.connect(cas / "index.db")
    for iid, size in db.execute("SELECT id, size FROM images"):
        assert (cas / "blobs" / iid).stat().st_size == size
    for key, layers in db.execute("SELECT key, layers FROM trees"):
        assert json.loads((cas / "trees" / key / "layers.json").read_text()) == json.loads(layers)
    for tree in (cas / "trees").iterdir():
        assert (tree / "layers.json").is_file() and (tree / "rootfs").is_dir()
    db.close()


def test_two_processes_import_the_same_image(tmp_path: Path) -> None:
    aci, iid = build_image(
        tmp_path / "img.aci", manifest("example.com/big"), big_files(large=8 << 20)
    )
    state = tmp_path / "state"
    cmd = [
        sys.executable,
        "-m",
        "podmgr",
        "--dir",
        str(state),
        "fetch",
        "--insecure-options=image",
        str(aci),
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [iid, iid]
    cas = state / "cas"
    assert [p.name for p in (cas / "blobs").iterdir()] == [iid]
    assert len(list((cas / "trees").iterdir())) == 1
    assert list((cas / "tmp").iterdir()) == []
    check_invariants(state)


_RENDER = """
import sys
from podmgr.store import Store
Store.open(sys.argv[1]).render(sys.argv[2])
"""


def test_kill_9_at_random_points_leaves_nothing_partial(tmp_path: Path) -> None:
    base, base_id = build_image(tmp_path / "base.aci", manifest("example.com/base"), big_files(600))
    top, top_id = build_image(
        tmp_path / "top.aci",
        manifest("example.com/top", deps=[dep("example.com/base")]),
        big_files(300, 4096, p="t"),
    )
    state = tmp_path / "state"
    rnd = random.Random(1234)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for i in range(20):
        if i % 2 == 0:
            cmd = [
                "-m",
                "podmgr",
                "--dir",
                str(state),
                "fetch",
                "--insecure-options=image",
                str(base),
                str(top),
            ]
        else:
            cmd = ["-c", _RENDER, str(state), top_id]
        p = subprocess.Popen(
            [sys.executable, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        time.sleep(rnd.uniform(0.05, 0.9))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (state / "cas" / "index.db").exists():
            check_invariants(state)
    # The next commands succeed and clean up after the dead processes.
    r = podmgr(state, "fetch", "--insecure-options=image", str(base), str(top))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [base_id, top_id]
    with Store.open(state) as s:
        rootfs = s.render(top_id)
        assert len(list(rootfs.rglob("f*"))) == 600
        assert len(list(rootfs.rglob("t*"))) == 300
        assert list(s.tmp.iterdir()) == []
    check_invariants(state)


def test_gc_respects_pins(tmp_path: Path, store: Store) -> None:
    aci, iid = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    store.add(aci)
    (store.dir / "pods" / "pod-1").mkdir(parents=True)
    store.pin("pod-1", [iid])
    store.render(iid)
    r = store.gc(0)
    assert r.images == [] and r.trees == []
    with pytest.raises(ConflictError, match="pod-1"):
        store.remove(iid)
    p = podmgr(store.dir, "image", "rm", iid)
    assert p.returncode == 8 and "used by pod pod-1" in p.stderr
    store.unpin("pod-1")
    r = store.gc(0)
    assert r.images == [iid] and len(r.trees) == 1
    assert not store.has(iid) and list(store.blobs.iterdir()) == []


def test_gc_pins_dependencies_and_drops_stale_pins(tmp_path: Path, store: Store) -> None:
    base, base_id = build_image(tmp_path / "b.aci", manifest("example.com/b"), {"x": "1"})
    top, top_id = build_image(
        tmp_path / "t.aci", manifest("example.com/t", deps=[dep("example.com/b")]), {}
    )
    store.add(base)
    store.add(top)
    store.pin("gone-pod", [top_id])  # no pod directory
    assert store.gc(0).images == []  # a fresh pin is kept, dependency included
    store.db.execute("UPDATE pins SET created = created - 7200")
    r = store.gc(0)
    assert r.stale_pins == ["gone-pod"]
    assert sorted(r.images) == sorted([base_id, top_id])


def test_gc_grace_period_keeps_recent_images(tmp_path: Path, store: Store) -> None:
    aci, iid = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    store.add(aci)
    assert store.gc(3600).images == []
    assert store.has(iid)


def test_a_pods_use_is_the_images_last_use(tmp_path: Path, store: Store) -> None:
    """`image list` said "never" for every image: nothing recorded a use."""
    base, base_id = build_image(tmp_path / "b.aci", manifest("example.com/b"), {"x": "1"})
    top, top_id = build_image(
        tmp_path / "t.aci", manifest("example.com/t", deps=[dep("example.com/b")]), {}
    )
    store.add(base)
    store.add(top)
    assert store.get(top_id).last_used is None and store.get(base_id).last_used is None
    store.pin("pod-1", [top_id])
    assert store.get(top_id).last_used is not None
    assert store.get(base_id).last_used is not None  # its dependency is used as well
    listed = podmgr(store.dir, "image", "list", "--format=json")
    rows = {i["name"]: i for i in json.loads(listed.stdout)["data"]}
    assert rows["example.com/t"]["lastUsed"] is not None


def test_pin_of_a_missing_image_fails(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.pin("p", ["sha512-" + "1" * 128])


def test_migrations_from_version_0_and_1(tmp_path: Path) -> None:
    # Version 0: an empty database file.
    (tmp_path / "v0" / "cas").mkdir(parents=True)
    sqlite3.connect(tmp_path / "v0" / "cas" / "index.db").close()
    with Store.open(tmp_path / "v0") as s:
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.images() == []
    # Version 1 with a row: the row survives, unverified.
    (tmp_path / "v1" / "cas").mkdir(parents=True)
    db = sqlite3.connect(tmp_path / "v1" / "cas" / "index.db")
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")
    db.execute(
        "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("sha512-" + "a" * 128, "example.com/old", "{}", b"{}", 1, 2, 3.0, None),
    )
    db.commit()
    db.close()
    with Store.open(tmp_path / "v1") as s:
        (info,) = s.images()
        assert info.name == "example.com/old" and info.verified is False
        assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # A newer database is refused rather than misread.
    db = sqlite3.connect(tmp_path / "v1" / "cas" / "index.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(PodmgrError, match="newer"):
        Store.open(tmp_path / "v1")


def test_resolve(tmp_path: Path, store: Store) -> None:
    ids = []
    for v in ("1.0", "2.0"):
        aci, iid = build_image(
            tmp_path / f"{v}.aci", manifest("example.com/app", labels={"version": v}), {"v": v}
        )
        store.add(aci)
        ids.append(iid)
    assert store.resolve(ids[0]) == ids[0]
    assert store.resolve(ids[1][:30]) == ids[1]
    assert store.resolve("example.com/app:1.0") == ids[0]
    assert store.resolve("example.com/app") == ids[1]  # the newest import
    with pytest.raises(NotFoundError):
        store.resolve("example.com/app:3.0")
    # A prefix both IDs share (at worst "sha512-" + nothing is refused as invalid).
    common = os.path.commonprefix([ids[0], ids[1]])  # noqa: RUF071
    if len(common) > len("sha512-"):
        with pytest.raises(UsageError, match="ambiguous"):
            store.resolve(common)
    with pytest.raises(UsageError):
        store.resolve("sha512-")


def test_refused_archive_leaves_the_store_unchanged(tmp_path: Path, store: Store) -> None:
    aci, _ = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    data = aci.read_bytes()
    bad = tmp_path / "bad.aci"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PodmgrError):
        store.add(bad)
    with pytest.raises(PodmgrError, match="mismatch"):
        store.add(aci, expected_id="sha512-" + "0" * 128)
    assert store.images() == [] and list(store.blobs.iterdir()) == []
    assert list(store.trees.iterdir()) == [] and list(store.tmp.iterdir()) == []


def test_cli_image_commands(tmp_path: Path) -> None:
    aci, iid = build_image(
        tmp_path / "a.aci", manifest("example.com/a", labels={"version": "1"}), {"bin/x": "x"}
    )
    state = tmp_path / "state"
    assert podmgr(state, "fetch", "--insecure-options=image", str(aci)).stdout.strip() == iid
    out = podmgr(state, "image", "list").stdout
    assert iid[:19] in out and iid not in out and "example.com/a" in out
    assert iid in podmgr(state, "image", "list", "--full").stdout
    doc = json.loads(podmgr(state, "image", "list", "--format=json").stdout)
    assert doc["data"][0]["verified"] is False and doc["data"][0]["version"] == "1"
    assert json.loads(podmgr(state, "image", "cat-manifest", "example.com/a").stdout)["name"] == (
        "example.com/a"
    )
    tar = tmp_path / "out.tar"
    assert podmgr(state, "image", "export", iid[:25], str(tar)).returncode == 0
    import hashlib

    assert "sha512-" + hashlib.sha512(tar.read_bytes()).hexdigest() == iid
    p = podmgr(state, "image", "extract", "--rootfs-only", iid, str(tmp_path / "e"))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "e/bin/x").read_text() == "x"
    assert podmgr(state, "image", "render", iid, str(tmp_path / "r")).returncode == 0
    assert (tmp_path / "r/manifest").exists() and (tmp_path / "r/rootfs/bin/x").exists()
    p = podmgr(state, "image", "rm", "example.com/nope")
    assert p.returncode == 3 and p.stderr.count("error:") == 1
    p = podmgr(state, "image", "gc", "--grace-period=soon")
    assert p.returncode == 2
    assert podmgr(state, "image", "rm", "example.com/a").returncode == 0
    assert json.loads(podmgr(state, "image", "list", "--format=json").stdout)["data"] == []


def test_cli_image_validate(tmp_path: Path) -> None:
    aci, _ = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    layout = tmp_path / "a.aci.layout"
    bad = tmp_path / "bad.json"
    bad.write_text('{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "Bad Name"}')
    p = podmgr(tmp_path / "state", "image", "validate", str(aci), str(layout),
               str(layout / "manifest"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(": valid ") == 3 and "example.com/a" in p.stdout
    p = podmgr(tmp_path / "state", "image", "validate", str(aci), str(bad))
    assert p.returncode == 4
    assert "bad.json: invalid" in p.stdout and "name" in p.stdout


def _integrity(state: Path) -> str:
    db = sqlite3.connect(state / "cas" / "index.db")
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


@pytest.fixture
def deep_tmp(tmp_path: Path) -> Iterator[Path]:
    from aci_util import remove_deep

    yield tmp_path
    remove_deep(tmp_path)


def test_a_deep_leftover_in_tmp_never_bricks_the_store(deep_tmp: Path) -> None:
    tmp_path = deep_tmp
    # What a killed import of a deeply nested image (or an older podmgr) leaves in tmp/.
    state = tmp_path / "state"
    Store.open(state).close()
    left = state / "cas" / "tmp" / "0123456789abcdef"
    left.mkdir()
    fd = os.open(left, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(sys.getrecursionlimit() * 2):
        os.mkdir("d", dir_fd=fd)
        new = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = new
    os.close(fd)
    p = podmgr(state, "image", "list")
    assert p.returncode == 0, p.stderr
    assert list((state / "cas" / "tmp").iterdir()) == []
    assert _integrity(state) == "ok"


def test_a_deeply_nested_image_is_refused_and_the_store_keeps_working(deep_tmp: Path) -> None:
    tmp_path = deep_tmp
    import gzip
    import tarfile

    from aci_util import entry, tar_of, valid_entries

    deep = tmp_path / "deep.aci"
    dirs = [entry("rootfs/" + "d/" * i, tarfile.DIRTYPE) for i in range(1, 1501)]
    deep.write_bytes(gzip.compress(tar_of(*valid_entries(), *dirs)))
    state = tmp_path / "state"
    for args in (["--insecure-options=image"], []):
        p = podmgr(state, "fetch", *args, str(deep))
        assert p.returncode in (1, 4), p.stderr
        assert "internal error" not in p.stderr and p.stderr.count("error:") == 1
    aci, iid = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    p = podmgr(state, "fetch", "--insecure-options=image", str(aci))
    assert p.returncode == 0 and p.stdout.strip() == iid, p.stderr
    p = podmgr(state, "image", "list")
    assert p.returncode == 0 and "example.com/a" in p.stdout, p.stderr
    assert podmgr(state, "image", "gc", "--grace-period=0s").returncode == 0
    assert list((state / "cas" / "tmp").iterdir()) == []
    assert _integrity(state) == "ok"


@pytest.mark.parametrize(
    "man",
    [
        b'{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/x\\n"}',
        b'{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/x",'
        b' "name": "example.com/y"}',
        b'{"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/x", "a": '
        + b"[" * 200_000
        + b"]" * 200_000
        + b"}",
    ],
    ids=["newline", "duplicate", "deep"],
)
def test_a_hostile_manifest_is_refused_and_the_store_keeps_working(
    tmp_path: Path, man: bytes
) -> None:
    import gzip
    import tarfile

    from aci_util import entry, tar_of

    bad = tmp_path / "bad.aci"
    bad.write_bytes(
        gzip.compress(tar_of(entry("manifest", data=man), entry("rootfs", tarfile.DIRTYPE)))
    )
    state = tmp_path / "state"
    p = podmgr(state, "fetch", "--insecure-options=image", str(bad))
    assert p.returncode == 4, p.stderr
    assert "internal error" not in p.stderr and p.stderr.count("error:") == 1
    p = podmgr(state, "image", "validate", str(bad))
    assert p.returncode == 4 and "internal error" not in p.stderr, p.stderr
    aci, iid = build_image(tmp_path / "a.aci", manifest("example.com/a"), {"x": "1"})
    p = podmgr(state, "fetch", "--insecure-options=image", str(aci))
    assert p.returncode == 0 and p.stdout.strip() == iid, p.stderr
    p = podmgr(state, "image", "list")
    assert p.returncode == 0 and p.stdout.count("example.com/") == 1, p.stdout
    assert _integrity(state) == "ok"


def test_a_leftover_that_cannot_be_removed_does_not_stop_commands(tmp_path: Path) -> None:
    import shutil

    state = tmp_path / "state"
    Store.open(state).close()
    left = state / "cas" / "tmp" / "fedcba9876543210"
    (left / "d").mkdir(parents=True)
    stuck = left / "d" / "immutable"
    stuck.write_text("x")
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(stuck)]).returncode != 0:
        pytest.skip("needs chattr +i (root, a filesystem with the immutable attribute)")
    try:
        p = podmgr(state, "image", "list")
        assert p.returncode == 0, p.stderr
        assert "cannot remove" in p.stderr and "retried later" in p.stderr
        assert "error" not in p.stderr
    finally:
        subprocess.run([chattr, "-i", str(stuck)], check=True)
    assert podmgr(state, "image", "list").stderr == ""
    assert list((state / "cas" / "tmp").iterdir()) == []


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_validate_reads_a_layouts_manifest_only_if_small_and_regular(
    tmp_path: Path, kind: str
) -> None:
    layout = tmp_path / "layout"
    (layout / "rootfs").mkdir(parents=True)
    man = layout / "manifest"
    if kind == "dev-zero":
        man.symlink_to("/dev/zero")  # read_bytes() ran until MemoryError
    elif kind == "fifo":
        os.mkfifo(man)  # and this hung
    else:
        with open(man, "wb") as f:
            f.truncate(64 << 20)
    p = podmgr(tmp_path / "state", "image", "validate", str(layout), timeout=60)
    assert p.returncode == 4, p.stderr
    assert "internal error" not in p.stderr
    assert "not a regular file" in p.stdout or "is larger than" in p.stdout
