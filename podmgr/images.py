"""The ``podmgr image`` operations on the store, as result objects for the CLI.

Public interface::

    list_images(store, *, full=False) -> ImageList
    remove_images(store, refs) -> Removed
    gc_images(store, grace_seconds) -> GCResult
    export_image(store, ref, out) -> Exported
    extract_image(store, ref, dest, *, rootfs_only, render) -> Extracted
    cat_manifest(store, ref, *, pretty) -> ManifestText
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from podmgr.errors import NotFoundError

if TYPE_CHECKING:
    from podmgr.store import Store
    from podmgr.storerecords import ImageInfo

def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="seconds")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def short_id(image_id: str) -> str:
    return image_id[:19]


def human_size(n: int) -> str:
    from podmgr.fetch.progress import human_size as hs

    return hs(n)


@dataclasses.dataclass
class ImageList:
    kind: ClassVar[str] = "image-list"
    images: list[ImageInfo]
    full: bool = False

    def text(self) -> str:
        rows = [("ID", "NAME", "VERSION", "SIZE", "IMPORTED", "LAST USED", "VERIFIED")]
        for i in self.images:
            rows.append(
                (
                    i.id if self.full else short_id(i.id),
                    i.name,
                    i.version or "-",
                    human_size(i.size),
                    _ago(i.imported),
                    _ago(i.last_used),
                    "yes" if i.verified else "no",
                )
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        return "\n".join(
            "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )

    def data(self) -> list[dict[str, Any]]:
        return [
            {
                "id": i.id,
                "name": i.name,
                "version": i.version,
                "labels": i.labels,
                "size": i.size,
                "uncompressedSize": i.uncompressed_size,
                "importTime": _iso(i.imported),
                "lastUsed": _iso(i.last_used),
                "verified": i.verified,
                "signerFingerprint": i.fingerprint,
            }
            for i in self.images
        ]


def list_images(store: Store, *, full: bool = False) -> ImageList:
    return ImageList(store.images(), full)


@dataclasses.dataclass
class Removed:
    kind: ClassVar[str] = "image-rm"
    ids: list[str]

    def text(self) -> str:
        return "\n".join(f"removed {i}" for i in self.ids)

    def data(self) -> dict[str, Any]:
        return {"removed": self.ids}


def remove_images(store: Store, refs: list[str]) -> Removed:
    """Resolve every reference first, so that a typo removes nothing."""
    ids = list(dict.fromkeys(store.resolve(r) for r in refs))
    for iid in ids:
        store.remove(iid)
    return Removed(ids)


@dataclasses.dataclass
class GCResult:
    kind: ClassVar[str] = "image-gc"
    images: list[str]
    trees: list[str]
    stale_pins: list[str]

    def text(self) -> str:
        lines = [f"removed image {i}" for i in self.images]
        lines += [f"removed tree {t}" for t in self.trees]
        lines += [f"dropped stale pins of pod {p}" for p in self.stale_pins]
        return "\n".join(lines)

    def data(self) -> dict[str, Any]:
        return {"images": self.images, "trees": self.trees, "stalePins": self.stale_pins}


def gc_images(store: Store, grace: float) -> GCResult:
    r = store.gc(grace)
    return GCResult(r.images, r.trees, r.stale_pins)


@dataclasses.dataclass
class Exported:
    kind: ClassVar[str] = "image-export"
    id: str
    path: Path
    size: int

    def text(self) -> str:
        return self.id


def export_image(store: Store, ref: str, out: Path) -> Exported:
    """Write the uncompressed tar (whose SHA-512 is the ID) to ``out``."""
    from podmgr.aci import open_tar_stream
    from podmgr.errors import InvalidError
    from podmgr.extract import CHUNK
    from podmgr.fsutil import atomic_writer
    from podmgr.render import _sha512

    iid = store.resolve(ref)
    h = _sha512()
    n = 0
    with atomic_writer(out, 0o644) as f, open_tar_stream(store.blob_path(iid)) as s:
        while chunk := s.read(CHUNK):
            h.update(chunk)
            f.write(chunk)
            n += len(chunk)
        if "sha512-" + h.finalize().hex() != iid:
            raise InvalidError(
                f"stored image {iid[:19]} is damaged (its hash does not match)",
                hint="remove it with podmgr image rm and fetch it again",
            )
    return Exported(iid, out, n)


@dataclasses.dataclass
class Extracted:
    kind: ClassVar[str] = "image-extract"
    id: str
    path: Path
    rendered: bool

    def text(self) -> str:
        return str(self.path)


def extract_image(
    store: Store, ref: str, dest: Path, *, rootfs_only: bool, render: bool
) -> Extracted:
    """Extract one image (or render it with dependencies) into the new directory ``dest``."""
    import os
    import tempfile

    from podmgr.errors import ConflictError
    from podmgr.render import extract_layer, render_into
    from podmgr.store import _rmtree

    iid = store.resolve(ref)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConflictError(f"{dest} exists and is not empty", hint="give a new directory")
    parent = dest.absolute().parent
    if not parent.is_dir():
        raise NotFoundError(f"directory {parent} does not exist")
    # Built beside the target and renamed, so DIR appears complete or not at all.
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=parent))
    try:
        if render:
            render_into(work, store.plan(iid), store.blob_path)
        else:
            fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                extract_layer(store.blob_path(iid), fd, hash=False)
            finally:
                os.close(fd)
        if not rootfs_only:
            (work / "manifest").write_bytes(store.manifest_bytes(iid))
        if dest.exists():
            dest.rmdir()
        os.rename(work / "rootfs" if rootfs_only else work, dest)
    finally:
        if work.exists():
            _rmtree(work)
    return Extracted(iid, dest, render)


@dataclasses.dataclass
class ManifestText:
    kind: ClassVar[str] = "image-manifest"
    id: str
    raw: bytes
    pretty: bool

    def text(self) -> str:
        if self.pretty:
            return json.dumps(json.loads(self.raw), indent=2)
        return self.raw.decode("utf-8", "replace").rstrip("\n")

    def data(self) -> Any:
        return json.loads(self.raw)


def cat_manifest(store: Store, ref: str, *, pretty: bool) -> ManifestText:
    iid = store.resolve(ref)
    return ManifestText(iid, store.manifest_bytes(iid), pretty)


@dataclasses.dataclass
class Checked:
    path: str
    #: ImageManifest, PodManifest, image layout or image archive
    what: str
    name: str | None
    error: str | None


@dataclasses.dataclass
class Validation:
    kind: ClassVar[str] = "image-validate"
    files: list[Checked]

    @property
    def failed(self) -> int:
        return sum(1 for c in self.files if c.error is not None)

    def text(self) -> str:
        return "\n".join(
            f"{c.path}: invalid {c.what}: {c.error}"
            if c.error
            else f"{c.path}: valid {c.what}" + (f" {c.name}" if c.name else "")
            for c in self.files
        )


def _read_manifest_file(path: Path) -> bytes:
    """A manifest file's bytes: a regular file (a FIFO or /dev/zero in a layout someone
    else made must neither hang nor exhaust memory) of at most MAX_MANIFEST_SIZE."""
    import os

    from podmgr.errors import InvalidError
    from podmgr.extract import MAX_MANIFEST_SIZE
    from podmgr.fsutil import READ_UNTRUSTED, read_regular

    fd = os.open(path, READ_UNTRUSTED)
    try:
        data = read_regular(fd, MAX_MANIFEST_SIZE)
    finally:
        os.close(fd)
    if isinstance(data, str):
        raise InvalidError(f"{path} {data}")
    return data


def _check_one(path: Path) -> Checked:
    from podmgr import aci
    from podmgr.errors import PodmgrError
    from podmgr.schema import parse_image_manifest, parse_manifest

    what = "image archive"
    try:
        if path.is_dir():
            what = "image layout"
            if not (path / "rootfs").is_dir():
                raise PodmgrError("rootfs/ is missing or not a directory")
            m = parse_image_manifest(_read_manifest_file(path / "manifest"))
            return Checked(str(path), what, m.name, None)
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"{"):
            what = "manifest"
            doc = parse_manifest(_read_manifest_file(path))
            name = getattr(doc, "name", None)
            return Checked(str(path), type(doc).__name__, name, None)
        res = aci.validate(path)
        return Checked(str(path), what, parse_image_manifest(res.manifest_bytes).name, None)
    except PodmgrError as e:
        return Checked(str(path), what, None, e.message)
    except OSError as e:
        return Checked(str(path), what, None, e.strerror or str(e))


def validate_files(paths: list[Path]) -> Validation:
    """Check each manifest JSON file, image layout directory or image archive."""
    return Validation([_check_one(p) for p in paths])
