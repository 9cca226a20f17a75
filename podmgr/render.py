"""Rendering an image's root filesystem with its dependencies (ace.md "Filesystem Setup").

Public interface::

    Whitelist(paths)                       # a non-empty pathWhitelist; .allows(path, is_dir)
    Layer(image_id, whitelists)            # one pass over one image's rootfs, filtered
    plan(image_id, manifest_of, resolve_dependency) -> list[Layer]   # the render order
    extract_layer(src, root_fd, *, whitelists=(), overwrite=False, tee=None,
                  expected_id=None, hash=True, keep_manifest=False) -> LayerResult
    render_into(target: Path, layers, blob_of) -> None   # every layer into an empty dir

Order: dependencies depth first in listed order, each before the image that needs it;
``A->[B,C], C->[D]`` gives B, D, C, A. A dependency reached by several paths is
rendered once per path (``A->[B,C], B->[D], C->[D]`` gives D, B, D, C, A), because each
path filters it with different whitelists.

Overwriting: a later layer replaces what an earlier one left at the same path. A
directory over a directory keeps the lower one's content and takes the upper one's
owner, mode and mtime; anything else is removed first (a directory with its subtree), so
a symlink to a directory is replaced, never followed. The extraction code of
:mod:`podmgr.extract` is reused: every directory is opened with ``O_NOFOLLOW`` relative to
its parent, so nothing outside the target is ever touched.

Whitelists: a non-empty ``pathWhitelist`` is the complete set of paths the image's rootfs
has after rendering. A layer reached through ``A -> C -> D`` keeps a path only if the
whitelist of every one of A, C and D that has one allows it. A path is allowed when it is
listed; when a listed entry ends in ``/`` (a directory, as in the spec's example
``/etc/systemd/system/``), everything below it is allowed too; and the directories above
a listed path are allowed as directories, since the listed path cannot exist without them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from podmgr.errors import InvalidError, NotFoundError, PodmgrError
from podmgr.extract import Budget, Extractor, TarEntry, TarReader, walk_archive
from podmgr.fsutil import rmtree_at

#: Bounds a dependency graph whose paths multiply (a DAG rendered once per path).
MAX_LAYERS = 256


def _parent(path: str) -> tuple[str, str]:
    head, _, tail = path.rpartition("/")
    return head, tail


class Whitelist:
    """A non-empty ``pathWhitelist`` (see the module docstring for what it allows)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.subtrees: list[str] = []
        self.ancestors: set[str] = set()
        for p in paths:
            norm = "/" + "/".join(s for s in p.split("/") if s and s != ".")
            if p.endswith("/") and norm != "/":
                self.subtrees.append(norm + "/")
            self.exact.add(norm)
            parts = norm.split("/")
            for i in range(1, len(parts)):
                self.ancestors.add("/".join(parts[:i]) or "/")

    def allows(self, path: str, is_dir: bool) -> bool:
        """Whether absolute ``path`` (in the rootfs) stays."""
        if path in self.exact or path == "/":
            return True
        if is_dir and path in self.ancestors:
            return True
        return any(path.startswith(s) for s in self.subtrees)


@dataclasses.dataclass(frozen=True)
class Layer:
    image_id: str
    #: The whitelists of the image and of every image above it on this path.
    whitelists: tuple[Whitelist, ...] = ()


def plan(
    image_id: str,
    manifest_of: Callable[[str], Any],
    resolve_dependency: Callable[[Any], str],
) -> list[Layer]:
    """The layers of ``image_id`` in render order (the image itself last).

    ``manifest_of(id)`` gives an ImageManifest; ``resolve_dependency(dep)`` gives the image
    ID a Dependency stands for (raising NotFoundError or InvalidError).
    """
    layers: list[Layer] = []

    def visit(iid: str, above: tuple[Whitelist, ...], path: tuple[str, ...]) -> None:
        if iid in path:
            chain = " -> ".join(p[:19] for p in (*path, iid))
            raise InvalidError(f"dependency cycle: {chain}")
        manifest = manifest_of(iid)
        wl = (*above, Whitelist(manifest.path_whitelist)) if manifest.path_whitelist else above
        for dep in manifest.dependencies:
            visit(resolve_dependency(dep), wl, (*path, iid))
        layers.append(Layer(iid, wl))
        if len(layers) > MAX_LAYERS:
            raise InvalidError(
                f"image {image_id[:19]} needs more than {MAX_LAYERS} layers to render",
                hint="its dependency graph is too large (shared dependencies count once per path)",
            )

    visit(image_id, (), ())
    return layers


@dataclasses.dataclass
class LayerResult:
    #: ``sha512-…`` of the uncompressed tar, or None when not hashed.
    id: str | None
    manifest_bytes: bytes
    size: int
    uncompressed_size: int


class _LayerExtractor(Extractor):
    """An Extractor that filters by whitelists and replaces what lower layers left."""

    def __init__(
        self,
        root_fd: int,
        *,
        whitelists: Sequence[Whitelist],
        overwrite: bool,
        keep_manifest: bool,
    ) -> None:
        super().__init__(root_fd, as_root=os.geteuid() == 0)
        self._whitelists = whitelists
        self._overwrite = overwrite
        self._keep_manifest = keep_manifest
        #: Implied parents that a lower layer created: their metadata stays.
        self._adopted: set[str] = set()
        self._skipped: set[str] = set()

    def _keep(self, path: str, is_dir: bool) -> bool:
        if not self._whitelists or path == "rootfs":
            return True
        rel = path[len("rootfs") :]
        if all(w.allows(rel, is_dir) for w in self._whitelists):
            return True
        self._skipped.add(path)
        return False

    def _remove(self, path: str) -> None:
        head, tail = _parent(path)
        dfd = self._dirfd(head)
        st = os.stat(tail, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            # fd-based and iterative: safe against symlinks inside the removed tree, and
            # against its depth.
            rmtree_at(dfd, tail)
            for cached in [p for p in self._fds if p == path or p.startswith(path + "/")]:
                os.close(self._fds.pop(cached))
        else:
            os.unlink(tail, dir_fd=dfd)

    def _replacing(self, path: str, create: Callable[[], None]) -> None:
        try:
            create()
        except FileExistsError:
            if not self._overwrite:
                raise
            self._remove(path)
            create()

    def mkdir(self, path: str, entry: TarEntry | None) -> None:
        if not self._keep(path, True):
            return
        if not self._overwrite or path in self._dirs:
            if entry is not None:
                self._adopted.discard(path)
            super().mkdir(path, entry)
            return
        head, tail = _parent(path)
        try:
            st: os.stat_result | None = os.stat(
                tail, dir_fd=self._dirfd(head), follow_symlinks=False
            )
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._dirs[path] = entry
            if entry is None:
                self._adopted.add(path)
            elif entry.xattrs:
                self._xattrs(self._dirfd(path), entry)
                entry.xattrs = {}  # applied; not held until finish()
            return
        if st is not None:
            self._remove(path)
        super().mkdir(path, entry)

    def file(self, path: str, entry: TarEntry, reader: TarReader) -> None:
        # A skipped file's data is skipped by the reader's next().
        if self._keep(path, False):
            self._replacing(path, lambda: Extractor.file(self, path, entry, reader))

    def symlink(self, path: str, entry: TarEntry) -> None:
        if self._keep(path, False):
            self._replacing(path, lambda: Extractor.symlink(self, path, entry))

    def hardlink(self, path: str, target: str) -> None:
        if self._keep(path, False) and target not in self._skipped:
            self._replacing(path, lambda: Extractor.hardlink(self, path, target))

    def node(self, path: str, entry: TarEntry) -> None:
        if self._keep(path, False):
            self._replacing(path, lambda: Extractor.node(self, path, entry))

    def manifest(self, entry: TarEntry, data: bytes) -> None:
        if self._keep_manifest:
            self._replacing("manifest", lambda: Extractor.manifest(self, entry, data))

    def finish(self) -> None:
        for path in self._adopted:
            self._dirs.pop(path, None)
        super().finish()


class _Tee:
    """A source whose every read is also written to ``out`` (the blob being stored)."""

    def __init__(self, src: BinaryIO, out: BinaryIO) -> None:
        self._src = src
        self._out = out

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self._out.write(data)
        return data

    def readable(self) -> bool:
        return True


def _sha512() -> Any:
    # As in podmgr.aci: cryptography's SHA-512 is faster than hashlib's here.
    from cryptography.hazmat.primitives import hashes

    return hashes.Hash(hashes.SHA512())


def extract_layer(
    src: BinaryIO | str | os.PathLike[str],
    root_fd: int,
    *,
    whitelists: Sequence[Whitelist] = (),
    overwrite: bool = False,
    tee: BinaryIO | None = None,
    expected_id: str | None = None,
    hash: bool = True,
    keep_manifest: bool = False,
    budget: Budget | None = None,
) -> LayerResult:
    """Extract the archive ``src`` below ``root_fd`` in one pass (rootfs/ and optionally
    the manifest), checking the ACI layout, hashing the uncompressed stream and copying
    the raw bytes to ``tee`` on the way, within ``budget`` if given. Nothing is cleaned
    up on error: the caller extracts into a temporary directory it owns.
    """
    from podmgr.aci import open_tar_stream

    with contextlib.ExitStack() as stack:
        source: Any = src
        if tee is not None:
            if isinstance(src, str | os.PathLike):
                source = stack.enter_context(open(src, "rb"))
            source = _Tee(source, tee)
        h = _sha512() if hash or expected_id else None
        sink = _LayerExtractor(
            root_fd, whitelists=whitelists, overwrite=overwrite, keep_manifest=keep_manifest
        )
        stack.callback(sink.close)
        stream = stack.enter_context(
            open_tar_stream(source, budget.limits if budget is not None else None)
        )
        reader = TarReader(stream.read, h.update if h is not None else None, budget)
        try:
            manifest = walk_archive(reader, sink)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise PodmgrError("no space left on the device of the image store") from None
            raise PodmgrError(f"cannot extract image: {e}") from None
        reader.drain()
        sink.finish()
        size = stream.raw.count
    digest = "sha512-" + h.finalize().hex() if h is not None else None
    if expected_id is not None and digest != expected_id:
        raise InvalidError(
            f"image ID mismatch: expected {expected_id[:19]}…, got {str(digest)[:19]}…",
            hint="the stored image is damaged; remove it with podmgr image rm and fetch it again",
        )
    return LayerResult(digest, manifest, size, reader.total)


def render_into(
    target: Path,
    layers: Sequence[Layer],
    blob_of: Callable[[str], Path],
    budget: Budget | None = None,
) -> None:
    """Render ``layers`` in order into the existing empty directory ``target`` (each
    layer within ``budget`` if given).

    ``target`` receives ``rootfs/``; its mode is the lowest layer's, overridden by upper
    ones that have a rootfs entry.
    """
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for i, layer in enumerate(layers):
            path = blob_of(layer.image_id)
            if not path.exists():
                raise NotFoundError(f"image {layer.image_id[:19]} is missing from the store")
            extract_layer(
                path,
                fd,
                whitelists=layer.whitelists,
                overwrite=i > 0,
                hash=False,
                budget=Budget(budget.limits, target) if budget is not None else None,
            )
    finally:
        os.close(fd)
