"""The image store: content-addressed blobs, a SQLite index, rendered trees and pins.

Public interface (what the pods code uses)::

    store = Store.open(dir)                 # also a context manager; store.close()
    store.resolve(ref) -> str               # full ID, unique ID prefix, or name[:version][,l=v…]
    store.manifest(image_id) -> ImageManifest
    store.render(image_id) -> Path          # <tree>/rootfs, rendered with dependencies if needed
    store.pin(pod_uuid, image_ids)          # before render; keeps images (and their
    store.unpin(pod_uuid)                   #   dependencies and trees) from rm and gc;
                                            #   records them as "last used" now
    store.add(path, …) -> ImageInfo         # import an archive (used by podmgr.fetchimage)
    store.get(image_id) / images() / remove(image_id) / gc(grace) / blob_path(image_id)

Layout under ``<dir>/cas``::

    index.db (+ -wal, -shm)        SQLite in WAL mode, schema version in PRAGMA user_version
    blobs/<image ID>               the archive exactly as fetched (compressed or not)
    trees/<key>/rootfs/            a rendered root filesystem, ready as an overlay lower dir
    trees/<key>/manifest           the top image's manifest
    trees/<key>/layers.json        the image IDs rendered, in order: recorded at render
                                   time; a tree is never re-hashed when a pod starts
    tmp/<name>, tmp/<name>.lock    work in progress, owned by whoever holds the flock
    downloads/                     partial downloads, kept for Range resumption
    locks/<what>.lock              flock(2) files per image ID, tree key and URL

A tree's key is the SHA-256 of its layer IDs in render order: with the manifests (which
the IDs fix) that post-order list determines the dependency tree, hence the whitelists.

Correctness rules:

- Everything is written below ``tmp/``, fsynced (``syncfs`` for trees) and then renamed
  into place; a name in ``blobs/`` or ``trees/`` is therefore always complete. The index
  row is written after the rename; a blob or tree without a row (a crash in between) is
  adopted by the next import or render and removed by ``gc``.
- Work in ``tmp/`` whose lock is not held is a dead process's and is removed on open.
- Importing an image takes ``image-<id>``'s lock exclusively around the rename and the
  insert, so two processes importing one image both succeed with one copy. Renders of
  one tree key are serialised on ``tree-<key>``.
- ``remove``/``gc`` take the same locks and re-check pins under them; ``pin`` takes the
  image's lock (shared) and fails if the image is gone. So a pod pins before it renders,
  and nothing it pinned disappears. Pins whose pod directory (``<dir>/pods/<uuid>``) is
  gone and that are older than ``stale_pin_age`` are dropped by ``gc``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from podmgr import logger
from podmgr.errors import ConflictError, InvalidError, NotFoundError, PodmgrError, UsageError
from podmgr.fsutil import fsync_dir, rmtree

if TYPE_CHECKING:
    from podmgr.extract import ImportLimits
    from podmgr.render import Layer
    from podmgr.schema import Dependency, ImageManifest
    from podmgr.storerecords import GCReport, ImageInfo, Remote

log = logger.get(__name__)

#: Pins whose pod directory is gone are dropped by gc after this many seconds.
STALE_PIN_AGE = 3600.0

# Each entry migrates from version i to i + 1. Never edit one that has shipped: add one.
MIGRATIONS: list[str] = [
    # 0 -> 1
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        manifest BLOB NOT NULL,
        size INTEGER NOT NULL,
        uncompressed_size INTEGER NOT NULL,
        imported REAL NOT NULL,
        last_used REAL
    );
    CREATE INDEX images_name ON images(name);
    CREATE TABLE remotes (
        url TEXT PRIMARY KEY,
        etag TEXT,
        last_modified TEXT,
        max_age INTEGER,
        downloaded REAL NOT NULL,
        image_id TEXT NOT NULL
    );
    CREATE TABLE trees (
        key TEXT PRIMARY KEY,
        image_id TEXT NOT NULL,
        layers TEXT NOT NULL,
        rendered REAL NOT NULL,
        last_used REAL
    );
    """,
    # 1 -> 2: signature verification (issue 4) and pod pins.
    """
    ALTER TABLE images ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE images ADD COLUMN fingerprint TEXT;
    CREATE TABLE pins (
        pod_uuid TEXT NOT NULL,
        image_id TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (pod_uuid, image_id)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class ImportCheck(Protocol):
    """A check that sees an archive's bytes during :meth:`Store.add`'s one pass.

    ``write`` gets every byte read from the source, in order; ``finish`` is called after
    the pass and before anything is published, and returns (verified, fingerprint) for
    the index, or raises to refuse the image (then nothing is published). The signature
    check of :mod:`podmgr.imagefetch` is one.
    """

    def write(self, data: bytes) -> object: ...

    def finish(self) -> tuple[bool, str | None]: ...


#: The order of images() and find().
_NEWEST_FIRST = " ORDER BY imported DESC, id"


def tree_key(layers: Sequence[Layer]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(layer.image_id for layer in layers).encode()).hexdigest()


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path``: one call for a whole tree of files."""
    import ctypes  # only when publishing: 3 ms of start-up otherwise

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    except AttributeError:
        os.sync()
    finally:
        os.close(fd)


def _rmtree(path: Path) -> None:
    # Iterative, fd-based: a tree nested any depth (a hostile image's, left in tmp/ by
    # a killed import) never makes a later command fail with RecursionError.
    rmtree(path)


def _discard(path: Path) -> bool:
    """Remove work in ``tmp/``; a failure is logged, not raised: what is left there is
    retried by the next open, and must never stop a command (issue 18: a leftover podmgr
    could not remove made every later command fail)."""
    try:
        _rmtree(path)
    except OSError as e:
        log.warning("cannot remove %s (it is retried later): %s", path, e)
        return False
    return True


class _Lock:
    """An flock(2) on ``<cas>/locks/<name>.lock``; per open file, so also between threads."""

    def __init__(self, path: Path, shared: bool = False, blocking: bool = True) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        op = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(self.fd, op | (0 if blocking else fcntl.LOCK_NB))
        except BaseException:
            os.close(self.fd)
            raise

    def release(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> _Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Store:
    """The image store under ``<dir>/cas`` (see the module docstring)."""

    def __init__(self, dir: Path, db: sqlite3.Connection) -> None:
        self.dir = Path(dir)
        self.root = self.dir / "cas"
        self.blobs = self.root / "blobs"
        self.trees = self.root / "trees"
        self.tmp = self.root / "tmp"
        self.downloads = self.root / "downloads"
        self.locks = self.root / "locks"
        self.db = db
        self._manifests: dict[str, ImageManifest] = {}
        self._limits: ImportLimits | None = None

    @property
    def limits(self) -> ImportLimits:
        """What one import may write: from the environment (docs/exit-codes.md)."""
        if self._limits is None:
            from podmgr.extract import ImportLimits

            self._limits = ImportLimits.from_env()
        return self._limits

    @limits.setter
    def limits(self, value: ImportLimits) -> None:
        self._limits = value

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, dir: str | os.PathLike[str]) -> Store:
        """Open (creating and migrating as needed) the store under ``dir``."""
        root = Path(dir) / "cas"
        try:
            for sub in ("blobs", "trees", "tmp", "downloads", "locks"):
                (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(root / "index.db", timeout=60.0, isolation_level=None)
        except PermissionError as e:
            from podmgr.errors import PermissionDenied

            raise PermissionDenied(
                f"cannot open the image store in {dir}: {e.strerror}",
                hint="run as root, or pass --dir to a directory you can write",
            ) from None
        except (OSError, sqlite3.Error) as e:
            raise PodmgrError(f"cannot open the image store in {dir}: {e}") from None
        store = cls(Path(dir), db)
        try:
            # Switching a new database to WAL takes an exclusive lock for which SQLite does
            # not wait (no busy handler), so two processes opening a fresh store at once
            # would see "database is locked": serialise set-up and migration.
            with store.lock("index-setup"):
                store._setup()
            store.cleanup_tmp()
        except BaseException:
            db.close()
            raise
        return store

    def _setup(self) -> None:
        self.db.execute("PRAGMA busy_timeout = 60000")
        self.db.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL keeps the database consistent on power loss; only the last
        # commits may be lost, and they are re-done by fetching again.
        self.db.execute("PRAGMA synchronous = NORMAL")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        self.migrate()

    def migrate(self) -> None:
        """Apply every migration the database lacks, each in its own transaction."""
        while True:
            with self._write():
                version = self.db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise PodmgrError(
                        f"the image store {self.root} has schema version {version}, newer "
                        f"than this podmgr's {SCHEMA_VERSION}",
                        hint="use the podmgr version that wrote it, or a newer one",
                    )
                if version == SCHEMA_VERSION:
                    return
                log.debug("migrating image store from version %d", version)
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {version + 1}")

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- locks and temporary work --------------------------------------------------------

    def lock(self, name: str, *, shared: bool = False, blocking: bool = True) -> _Lock:
        return _Lock(self.locks / f"{name}.lock", shared, blocking)

    @contextlib.contextmanager
    def _locked(self, name: str, *, shared: bool = False) -> Iterator[None]:
        lk = self.lock(name, shared=shared)
        try:
            yield
        finally:
            lk.release()

    @contextlib.contextmanager
    def workdir(self) -> Iterator[Path]:
        """A fresh directory in ``tmp/``, removed on exit unless its content was moved."""
        name = os.urandom(8).hex()
        lk = _Lock(self.tmp / f"{name}.lock")
        path = self.tmp / name
        try:
            path.mkdir(mode=0o700)
            yield path
        finally:
            if _discard(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lk.path)
            lk.release()

    def cleanup_tmp(self) -> list[str]:
        """Remove work left in ``tmp/`` by processes that died (their lock is free)."""
        removed = []
        for entry in os.scandir(self.tmp):
            name = entry.name.removesuffix(".lock")
            if entry.name.endswith(".lock") and (self.tmp / name).exists():
                continue  # handled with its entry
            try:
                lk = _Lock(self.tmp / f"{name}.lock", blocking=False)
            except BlockingIOError:
                continue
            try:
                if _discard(self.tmp / name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lk.path)
                    removed.append(name)
            finally:
                lk.release()
        return removed

    # -- reading -------------------------------------------------------------------------

    @staticmethod
    def _info(row: sqlite3.Row | tuple[Any, ...]) -> ImageInfo:
        from podmgr.storerecords import ImageInfo

        return ImageInfo(
            id=row[0],
            name=row[1],
            labels=json.loads(row[2]),
            size=row[3],
            uncompressed_size=row[4],
            imported=row[5],
            last_used=row[6],
            verified=bool(row[7]),
            fingerprint=row[8],
        )

    _COLUMNS = (
        "id, name, labels, size, uncompressed_size, imported, last_used, verified, fingerprint"
    )

    def images(self, name: str | None = None) -> list[ImageInfo]:
        """Stored images (optionally of one name), newest import first."""
        sql = f"SELECT {self._COLUMNS} FROM images"
        args: tuple[Any, ...] = ()
        if name is not None:
            sql += " WHERE name = ?"
            args = (name,)
        rows = self.db.execute(sql + _NEWEST_FIRST, args).fetchall()
        return [self._info(r) for r in rows]

    def get(self, image_id: str) -> ImageInfo | None:
        row = self.db.execute(
            f"SELECT {self._COLUMNS} FROM images WHERE id = ?", (image_id,)
        ).fetchone()
        return self._info(row) if row else None

    def has(self, image_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone()
        return row is not None

    def blob_path(self, image_id: str) -> Path:
        return self.blobs / image_id

    def manifest_bytes(self, image_id: str) -> bytes:
        row = self.db.execute("SELECT manifest FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"image {image_id[:19]} is not in the store")
        return bytes(row[0])

    def manifest(self, image_id: str) -> ImageManifest:
        if image_id not in self._manifests:
            from podmgr.schema import parse_image_manifest

            self._manifests[image_id] = parse_image_manifest(self.manifest_bytes(image_id))
        return self._manifests[image_id]

    def resolve(self, ref: str) -> str:
        """The image ID that ``ref`` names among stored images.

        ``ref`` is a full ID, a unique ID prefix (``sha512-`` and at least one hex
        digit), or an app string ``name[:version][,label=value…]`` matched on the name and
        the labels written (the newest import wins).
        """
        ref = ref.strip()
        if ref.lower().startswith("sha512-"):
            prefix = ref.lower()
            if len(prefix) <= len("sha512-") or not all(
                c in "0123456789abcdef" for c in prefix[7:]
            ):
                raise UsageError(
                    f"invalid image ID {ref!r}", hint="write sha512- and some hex digits"
                )
            rows = self.db.execute(
                "SELECT id FROM images WHERE substr(id, 1, ?) = ? LIMIT 2", (len(prefix), prefix)
            ).fetchall()
            if not rows:
                raise NotFoundError(
                    f"no image {ref} in the store", hint="list images with: podmgr image list"
                )
            if len(rows) > 1:
                raise UsageError(
                    f"image ID prefix {ref} is ambiguous", hint="give more hex digits of the ID"
                )
            return str(rows[0][0])
        from podmgr.fetch.appstring import parse_app_string

        app = parse_app_string(ref)
        wanted = {k: app.labels[k] for k in app.explicit}
        for info in self.images(app.name):
            if all(info.labels.get(k) == v for k, v in wanted.items()):
                return info.id
        raise NotFoundError(
            f"no image {ref} in the store", hint=f"fetch it first: podmgr fetch {ref}"
        )

    def find(self, name: str, labels: dict[str, str]) -> list[str]:
        """IDs of stored images named ``name`` having all ``labels``, newest first."""
        # Without building records, which `podmgr run` needs none of.
        rows = self.db.execute(
            "SELECT id, labels FROM images WHERE name = ?" + _NEWEST_FIRST, (name,)
        ).fetchall()
        out = []
        for image_id, raw in rows:
            have = json.loads(raw)
            if all(have.get(k) == v for k, v in labels.items()):
                out.append(image_id)
        return out

    def resolve_dependency(self, dep: Dependency) -> str:
        """The stored image a dependency names (aci.md "Dependency Matching")."""
        labels = dep.labels.as_dict()
        found = self.find(dep.image_name, labels)
        desc = dep.image_name + "".join(f",{k}={v}" for k, v in labels.items())
        if dep.image_id is not None:
            if dep.image_id in found:
                return dep.image_id
            if found:
                raise InvalidError(
                    f"dependency {desc}: image ID mismatch: the manifest asks for "
                    f"{dep.image_id[:19]}…, the store has {found[0][:19]}…",
                    hint="the dependency's imageID must match exactly; fetch that image",
                )
            other = self.get(dep.image_id)
            if other is not None:
                raise InvalidError(
                    f"dependency {desc}: image {dep.image_id[:19]}… is {other.name} with "
                    "other labels"
                )
        if not found:
            raise NotFoundError(
                f"dependency {desc} is not in the store", hint=f"fetch it: podmgr fetch {desc}"
            )
        return found[0]

    # -- importing -----------------------------------------------------------------------

    def add(
        self,
        src: Path,
        *,
        take: bool = False,
        verified: bool = False,
        fingerprint: str | None = None,
        expected_id: str | None = None,
        manifest_bytes: bytes | None = None,
        check: ImportCheck | None = None,
    ) -> ImageInfo:
        """Import the archive ``src``; returns the stored image (new or already there).

        One pass hashes and checks the archive and copies it to the blob (or, with
        ``take``, renames ``src``, which must be on the store's filesystem); an image
        without dependencies is also extracted as its rendered tree in that same pass.
        ``check`` sees the archive's bytes in that pass too, and its ``finish()`` gives
        ``verified`` and ``fingerprint`` (or refuses the image) before anything is
        published. :attr:`limits` bound the archive, its uncompressed stream and the free
        space left on the store's filesystem (LimitError, with nothing published).
        """
        from podmgr import aci
        from podmgr.extract import Budget
        from podmgr.schema import parse_image_manifest

        limits = self.limits
        try:
            archive_size = os.stat(src).st_size
        except FileNotFoundError:
            raise NotFoundError(f"image archive not found: {src}") from None
        limits.check_archive(archive_size)
        limits.check_space(self.root, 0 if take else archive_size)
        if manifest_bytes is None:
            manifest_bytes = aci.read_manifest(src, limits=limits)
        manifest = parse_image_manifest(manifest_bytes)
        render_now = not manifest.dependencies
        with self.workdir() as work, contextlib.ExitStack() as stack:
            blob_tmp = src if take else work / "blob"
            blob_file = None if take else stack.enter_context(open(blob_tmp, "wb"))
            tee: Any = blob_file
            if check is not None:
                tee = check if blob_file is None else _Fanout(blob_file, check)
            tree = work / "tree"
            if render_now:
                tree.mkdir(mode=0o755)
                fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                stack.callback(os.close, fd)
                from podmgr.render import Whitelist, extract_layer

                wl = (Whitelist(manifest.path_whitelist),) if manifest.path_whitelist else ()
                res = extract_layer(
                    src,
                    fd,
                    whitelists=wl,
                    tee=tee,
                    expected_id=expected_id,
                    keep_manifest=True,
                    budget=Budget(limits, self.root),
                )
                image_id, size, usize = str(res.id), res.size, res.uncompressed_size
                seen_manifest = res.manifest_bytes
            else:
                with open(src, "rb") as f:
                    source: Any = f if tee is None else _TeeReader(f, tee)
                    r = aci.validate(
                        source, expected_id=expected_id, check_manifest=False, limits=limits
                    )
                image_id, size, usize = r.id, r.size, r.uncompressed_size
                seen_manifest = r.manifest_bytes
            if seen_manifest != manifest_bytes:
                raise InvalidError(f"{src} changed while it was being imported")
            if blob_file is not None:
                blob_file.flush()
                os.fsync(blob_file.fileno())
            if check is not None:
                # The verdict comes before the blob, the row or the tree is published.
                verified, fingerprint = check.finish()
            with self._locked(f"image-{image_id}"):
                blob = self.blob_path(image_id)
                if not blob.exists():
                    if take:
                        with open(src, "rb") as f:
                            os.fsync(f.fileno())
                    os.chmod(blob_tmp, 0o644)
                    os.replace(blob_tmp, blob)
                    fsync_dir(self.blobs)
                self._insert_image(
                    image_id, manifest, manifest_bytes, size, usize, verified, fingerprint
                )
            if render_now:
                from podmgr.render import Layer

                layers = [Layer(image_id, wl)]
                with self._locked(f"tree-{tree_key(layers)}"):
                    self._publish_tree(tree, layers)
        info = self.get(image_id)
        assert info is not None
        return info

    def _insert_image(
        self,
        image_id: str,
        manifest: ImageManifest,
        manifest_bytes: bytes,
        size: int,
        usize: int,
        verified: bool,
        fingerprint: str | None,
    ) -> None:
        now = time.time()
        with self._write():
            self.db.execute(
                "INSERT OR IGNORE INTO images (id, name, labels, manifest, size,"
                " uncompressed_size, imported, last_used, verified, fingerprint)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (
                    image_id,
                    manifest.name,
                    json.dumps(manifest.labels.as_dict(), sort_keys=True),
                    manifest_bytes,
                    size,
                    usize,
                    now,
                    int(verified),
                    fingerprint,
                ),
            )
            if verified:
                # A verified import upgrades a copy that was imported unverified.
                self.db.execute(
                    "UPDATE images SET verified = 1, fingerprint = ? WHERE id = ?",
                    (fingerprint, image_id),
                )

    def remote(self, url: str) -> Remote | None:
        row = self.db.execute(
            "SELECT url, etag, last_modified, max_age, downloaded, image_id FROM remotes"
            " WHERE url = ?",
            (url,),
        ).fetchone()
        if row is None or not self.has(row[5]):
            return None
        from podmgr.storerecords import Remote

        return Remote(*row)

    def record_remote(self, remote: Remote) -> None:
        import dataclasses

        with self._write():
            self.db.execute(
                "INSERT OR REPLACE INTO remotes VALUES (?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(remote),
            )

    # -- trees ---------------------------------------------------------------------------

    def _publish_tree(self, work_tree: Path, layers: Sequence[Layer]) -> Path:
        """Move a complete tree into place (the caller holds its key's lock)."""
        key = tree_key(layers)
        final = self.trees / key
        if not final.exists():
            ids = [layer.image_id for layer in layers]
            (work_tree / "layers.json").write_text(json.dumps(ids) + "\n")
            _syncfs(work_tree)
            os.rename(work_tree, final)
            fsync_dir(self.trees)
        self._record_tree(key, layers)
        return final / "rootfs"

    def _record_tree(self, key: str, layers: Sequence[Layer]) -> None:
        now = time.time()
        with self._write():
            self.db.execute(
                "INSERT OR IGNORE INTO trees VALUES (?, ?, ?, ?, ?)",
                (key, layers[-1].image_id, json.dumps([x.image_id for x in layers]), now, now),
            )
            self.db.execute("UPDATE trees SET last_used = ? WHERE key = ?", (now, key))

    def plan(self, image_id: str) -> list[Layer]:
        from podmgr.render import plan

        return plan(image_id, self.manifest, self.resolve_dependency)

    def render(self, image_id: str) -> Path:
        """The rendered rootfs of ``image_id`` with its dependencies (rendered if needed)."""
        layers = self.plan(image_id)
        key = tree_key(layers)
        final = self.trees / key
        with self._locked(f"tree-{key}"):
            if not final.exists():
                with self.workdir() as work:
                    tree = work / "tree"
                    tree.mkdir(mode=0o755)
                    from podmgr.extract import Budget
                    from podmgr.render import render_into

                    render_into(tree, layers, self.blob_path, Budget(self.limits, self.root))
                    (tree / "manifest").write_bytes(self.manifest_bytes(image_id))
                    self._publish_tree(tree, layers)
            else:
                self._record_tree(key, layers)
        return final / "rootfs"

    # -- pins ----------------------------------------------------------------------------

    def dependency_closure(self, image_id: str) -> list[str]:
        """``image_id`` and every stored image it depends on (as resolvable now)."""
        out: dict[str, None] = {}

        def visit(iid: str, depth: int) -> None:
            if iid in out or depth > 64:
                return
            out[iid] = None
            for dep in self.manifest(iid).dependencies:
                with contextlib.suppress(NotFoundError, InvalidError):
                    visit(self.resolve_dependency(dep), depth + 1)

        visit(image_id, 0)
        return list(out)

    def pin(self, pod_uuid: str, image_ids: Iterable[str], *, dependencies: bool = True) -> None:
        """Keep ``image_ids``, their dependencies and trees for the pod ``pod_uuid``.

        ``dependencies=False`` pins just ``image_ids`` (the caller knows they have none;
        working out the closure reads the manifests).
        Raises NotFoundError if an image is not (or no longer) in the store.
        """
        for image_id in image_ids:
            closure = dependencies and self.has(image_id)
            for iid in self.dependency_closure(image_id) if closure else [image_id]:
                with self._locked(f"image-{iid}", shared=True):
                    if not self.has(iid):
                        raise NotFoundError(
                            f"image {iid[:19]} is not in the store",
                            hint="it may have just been removed; fetch it again",
                        )
                    now = time.time()
                    with self._write():
                        self.db.execute(
                            "INSERT OR IGNORE INTO pins VALUES (?, ?, ?)", (pod_uuid, iid, now)
                        )
                        # A pod uses it: `image list`'s "last used", in the same write.
                        self.db.execute(
                            "UPDATE images SET last_used = ? WHERE id = ?", (now, iid)
                        )

    def unpin(self, pod_uuid: str) -> None:
        with self._write():
            self.db.execute("DELETE FROM pins WHERE pod_uuid = ?", (pod_uuid,))

    def pins(self) -> dict[str, list[str]]:
        """image ID -> pod UUIDs pinning it."""
        out: dict[str, list[str]] = {}
        for uuid, iid in self.db.execute("SELECT pod_uuid, image_id FROM pins"):
            out.setdefault(iid, []).append(uuid)
        return out

    def _drop_stale_pins(self, max_age: float) -> list[str]:
        stale = []
        cutoff = time.time() - max_age
        rows = self.db.execute("SELECT pod_uuid, MAX(created) FROM pins GROUP BY pod_uuid")
        for uuid, created in rows.fetchall():
            if created < cutoff and not (self.dir / "pods" / uuid).exists():
                stale.append(uuid)
        for uuid in stale:
            self.unpin(uuid)
        return stale

    # -- removing ------------------------------------------------------------------------

    def _trees(self) -> list[tuple[str, str, list[str], float]]:
        rows = self.db.execute(
            "SELECT key, image_id, layers, COALESCE(last_used, rendered) FROM trees"
        ).fetchall()
        return [(k, i, json.loads(layers), t) for k, i, layers, t in rows]

    def _delete_tree(self, key: str, *, blocking: bool = True) -> bool:
        """Remove a tree unless its image is pinned; False if it was kept."""
        try:
            lk = self.lock(f"tree-{key}", blocking=blocking)
        except BlockingIOError:
            return False
        try:
            row = self.db.execute("SELECT image_id FROM trees WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] in self.pins():
                return False
            final = self.trees / key
            with self.workdir() as work:
                if final.exists():
                    # The rename makes it disappear at once; the slow rmtree comes after.
                    os.rename(final, work / "gone")
                with self._write():
                    self.db.execute("DELETE FROM trees WHERE key = ?", (key,))
            return True
        finally:
            lk.release()

    def remove(self, image_id: str) -> None:
        """Remove an image and its trees; ConflictError if a pod uses it."""
        pinned = self.pins().get(image_id)
        if pinned:
            raise ConflictError(
                f"image {image_id[:19]} is used by pod {pinned[0]}",
                hint="remove the pods that use it first",
            )
        for key, top, layers, _ in self._trees():
            if image_id in layers and not self._delete_tree(key):
                raise ConflictError(
                    f"image {image_id[:19]} is in use by a rendered tree of pinned image "
                    f"{top[:19]}",
                    hint="remove the pods that use it first",
                )
        with self._locked(f"image-{image_id}"):
            pinned = self.pins().get(image_id)
            if pinned:
                raise ConflictError(
                    f"image {image_id[:19]} is used by pod {pinned[0]}",
                    hint="remove the pods that use it first",
                )
            with self._write():
                self.db.execute("DELETE FROM images WHERE id = ?", (image_id,))
                self.db.execute("DELETE FROM remotes WHERE image_id = ?", (image_id,))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blob_path(image_id))
            self._manifests.pop(image_id, None)

    def gc(self, grace: float, *, stale_pin_age: float = STALE_PIN_AGE) -> GCReport:
        """Remove trees and images not used for ``grace`` seconds and not pinned."""
        from podmgr.storerecords import GCReport

        report = GCReport(stale_pins=self._drop_stale_pins(stale_pin_age))
        self.cleanup_tmp()
        cutoff = time.time() - grace
        pinned = self.pins()
        kept_layers: set[str] = set()
        for key, top, layers, used in self._trees():
            if top in pinned or used > cutoff or not self._delete_tree(key):
                kept_layers.update(layers)
            else:
                report.trees.append(key)
        for info in self.images():
            used = info.last_used or info.imported
            if info.id in pinned or info.id in kept_layers or used > cutoff:
                continue
            with contextlib.suppress(ConflictError):
                self.remove(info.id)
                report.images.append(info.id)
        self._remove_orphans(cutoff)
        return report

    def _remove_orphans(self, cutoff: float) -> None:
        known_trees = {k for k, *_ in self._trees()}
        for entry in os.scandir(self.trees):
            if entry.name not in known_trees:
                self._delete_tree(entry.name, blocking=False)
        for entry in os.scandir(self.blobs):
            if not self.has(entry.name):
                try:
                    lk = self.lock(f"image-{entry.name}", blocking=False)
                except BlockingIOError:
                    continue
                try:
                    if not self.has(entry.name):
                        os.unlink(entry.path)
                finally:
                    lk.release()
        for entry in os.scandir(self.downloads):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)


class _Fanout:
    """Writes to the blob being stored and to an :class:`ImportCheck`."""

    def __init__(self, blob: Any, check: ImportCheck) -> None:
        self._blob, self._check = blob, check

    def write(self, data: bytes) -> int:
        self._blob.write(data)
        self._check.write(data)
        return len(data)


class _TeeReader:
    """Reads ``src``, copying every byte read to ``out``."""

    def __init__(self, src: Any, out: Any) -> None:
        self._src, self._out = src, out

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._src.read(n)
        if data:
            self._out.write(data)
        return data

    def readable(self) -> bool:
        return True
