"""Fetching images into the store: files, URLs, app names by discovery, with signatures.

Public interface::

    fetch(refs, *, store, options=None) -> FetchResult       # what `podmgr fetch` prints
    fetch_images(refs, *, store, options=None) -> list[str]  # the image IDs, in order
    FetchConfig(pull_policy=PullPolicy.NEW, insecure=frozenset(), signatures={},
                trust=None, progress=None, http=None)
    PullPolicy: new | update | never
    Insecure: image | http | tls | all;  parse_insecure("http,tls") -> frozenset[Insecure]

A reference is a path or ``file://`` URL, an ``http(s)://`` URL, an image ID or unique
ID prefix (only from the store), or an app string ``name[:version][,label=value…]``.

Pull policies: ``new`` takes an image from the store when it has one (an app string
matched on name and the labels written; a URL fetched before), else fetches it;
``update`` asks the server again unless the copy is still fresh by the
``Cache-Control: max-age`` the server gave, sending the ETag so that an unchanged image is
not downloaded again; ``never`` uses the store only. Local files are always read.

Signatures (fail closed): the ASCII-armoured detached signature of the file as served is
``signatures[ref]`` (a path or URL), else ``<image>.asc`` beside the file or URL, else
the discovery template with ``{ext}`` = ``aci.asc``. It must verify with a key trusted
for the image's name, before anything is added to the store; otherwise UntrustedError
(exit 1). ``Insecure.IMAGE`` skips the check with a logged warning. The store records
whether and by whom each image was verified.

The check overlaps the import: :func:`podmgr.trust.verifying` starts sqv, and
:meth:`Store.add`'s one pass over the archive (decompress, hash, extract into ``tmp/``)
also feeds it the archive's bytes; the verdict is taken after the pass and before the
blob, the index row or the tree is published (see :mod:`podmgr.trust` for the cost).
Before any byte of the image is read, the signature is screened
(:func:`podmgr.trust.screen`): a missing or malformed one, or one whose issuer is no
trusted key (no key at all before the manifest gives the name; none for that name
after), is refused there, without decompressing anything (issue 18: a decompression
bomb signed by an unknown key was extracted in full before its refusal). What remains,
a signature by a trusted key that does not verify (a tampered image), is parsed and
extracted into ``tmp/`` before it is refused, by the same code that must already
withstand hostile archives, within the store's import limits (size of the archive and
of its uncompressed stream, free-space reserve; docs/exit-codes.md). If the import fails
before the verdict, the rest of the file is fed to sqv and a refused signature is
reported instead of the import's error: a tampered image is a bad signature wherever the
change is.

Dependencies are fetched recursively after their image: from the store when a stored
image matches the name and labels (and the ``imageID`` when given), else by discovery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from podmgr import logger
from podmgr.errors import InvalidError, NetworkError, NotFoundError, PodmgrError

if TYPE_CHECKING:
    from podmgr.fetch.discovery import AppString
    from podmgr.store import Store
    from podmgr.trust import SignatureCheck, UntrustedError

# Re-exported: the fetch options, kept light in podmgr.fetch, are part of this API.
from podmgr.fetch import FetchConfig as FetchConfig
from podmgr.fetch import Insecure as Insecure
from podmgr.fetch import Progress as Progress
from podmgr.fetch import PullPolicy as PullPolicy
from podmgr.fetch import parse_insecure as parse_insecure

log = logger.get(__name__)

#: Dependency chains longer than this are refused (they are cycles in practice).
MAX_DEPTH = 32
#: The largest signature file downloaded (an armoured signature is about 1 KiB).
MAX_SIGNATURE_SIZE = 1 << 20


@dataclasses.dataclass
class Fetched:
    ref: str
    id: str
    name: str
    #: store, file, url or discovery
    source: str
    verified: bool
    fingerprint: str | None


@dataclasses.dataclass
class FetchResult:
    kind: ClassVar[str] = "image-fetch"
    images: list[Fetched]

    def text(self) -> str:
        return "\n".join(f.id for f in self.images)

    def data(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(f) for f in self.images]


def fetch(refs: Sequence[str], *, store: Store, options: FetchConfig | None = None) -> FetchResult:
    """Fetch every reference (and its dependencies) into ``store``."""
    f = _Fetcher(store, options or FetchConfig())
    return FetchResult([f.fetch(ref) for ref in refs])


def fetch_images(
    refs: Sequence[str], *, store: Store, options: FetchConfig | None = None
) -> list[str]:
    """The image IDs of ``refs``, fetched as ``podmgr fetch`` would (default policy new)."""
    return [f.id for f in fetch(refs, store=store, options=options).images]


def _download_name(url: str) -> str:
    import hashlib

    return "dl-" + hashlib.sha256(url.encode()).hexdigest()[:32]


class _SignedImport:
    """The signature check of one image file, as Store.add's ImportCheck."""

    def __init__(self, check: SignatureCheck, path: Path) -> None:
        self.check = check
        self.path = path

    def write(self, data: bytes) -> int:
        return self.check.write(data)

    def finish(self) -> tuple[bool, str | None]:
        return True, self.check.result().fingerprint

    def refusal(self) -> UntrustedError | None:
        """After a failed import: the signature's refusal, feeding sqv the bytes the
        import did not read; None if the signature is good or cannot be judged."""
        from podmgr.trust import UntrustedError

        if self.check.done:
            return None  # the failure came after the verdict, or is the verdict
        try:
            with open(self.path, "rb") as f:
                f.seek(self.check.fed)
                while chunk := f.read(1 << 20):
                    self.check.write(chunk)
            self.check.result()
        except UntrustedError as e:
            return e
        except (OSError, PodmgrError):
            return None
        return None


class _Fetcher:
    def __init__(self, store: Store, cfg: FetchConfig) -> None:
        from podmgr.trust import default_store

        self.store = store
        self.cfg = cfg
        self.policy = cfg.pull_policy
        self.http = cfg.fetch_options()
        self.trust = cfg.trust or default_store()
        self._deps_done: set[str] = set()

    def fetch(self, ref: str) -> Fetched:
        from podmgr.fetch import ref_kind
        from podmgr.fetch.discovery import parse_app_string
        from podmgr.fetch.file import local_path

        sig = self.cfg.signatures.get(ref)
        if ref.lower().startswith("sha512-"):
            iid = self.store.resolve(ref)
            out = self._stored(ref, iid)
        elif (kind := ref_kind(ref)) == "file":
            out = self._file(ref, local_path(ref), sig)
        elif kind == "url":
            out = self._url(ref, ref, sig)
        else:
            out = self._app(ref, parse_app_string(ref), sig)
        self._dependencies(out.id, 0)
        return out

    def _stored(self, ref: str, iid: str, source: str = "store") -> Fetched:
        info = self.store.get(iid)
        if info is None:
            raise NotFoundError(f"image {iid[:19]} is not in the store")
        return Fetched(ref, iid, info.name, source, info.verified, info.fingerprint)

    # -- signatures ------------------------------------------------------------------

    @contextlib.contextmanager
    def _screened(
        self, image: Path, explicit: str | None, beside: str, name: str | None = None
    ) -> Iterator[Path | None]:
        """The signature file of ``image`` (None when insecure), refused if it cannot
        pass before any byte of the image is read: missing, malformed, or by a key not
        trusted (for ``name`` if known, else for any name). Issue 18: a decompression
        bomb signed by an unknown key was decompressed and extracted before its refusal.
        """
        from podmgr.trust import screen

        with self._signature(explicit, beside) as sig_path:
            if Insecure.IMAGE not in self.cfg.insecure:
                screen(sig_path, name or str(image), store=self.trust, name=name)
            yield sig_path

    @contextlib.contextmanager
    def _checked(
        self, image: Path, sig_path: Path | None, name: str
    ) -> Iterator[_SignedImport | None]:
        """The signature check of ``image`` for Store.add to feed; None when insecure.

        A missing, malformed or untrusted signature is refused on entry. If the block
        fails before the verdict, the rest of ``image`` is checked and a refusal replaces
        the error.
        """
        from podmgr.trust import verifying

        if Insecure.IMAGE in self.cfg.insecure:
            log.warning(
                "not verifying the signature of %s (--insecure-options=image): "
                "it will be used unverified",
                name,
            )
            yield None
            return
        with verifying(sig_path, name, store=self.trust) as check:
            signed = _SignedImport(check, image)
            try:
                yield signed
            except Exception as e:
                refusal = signed.refusal()
                if refusal is not None:
                    raise refusal from e
                raise

    @contextlib.contextmanager
    def _signature(self, explicit: str | None, beside: str) -> Any:
        """The signature file to check (None if there is none), removed afterwards."""
        from podmgr.fetch import ref_kind
        from podmgr.fetch.file import local_path

        if Insecure.IMAGE in self.cfg.insecure and explicit is None:
            yield None
            return
        source = explicit or beside
        if ref_kind(source) == "file":
            try:
                yield local_path(source)
            except NotFoundError:
                if explicit is not None:
                    raise
                yield None
            return
        from podmgr.fetch.http import HTTPStatusError, download

        name = _download_name(source) + ".asc"
        with self.store.lock(f"url-{name}"):
            try:
                dl = download(
                    source,
                    self.store.downloads,
                    options=self.http,
                    name=name,
                    max_size=MAX_SIGNATURE_SIZE,
                )
            except HTTPStatusError as e:
                if e.status != 404 or explicit is not None:
                    raise
                yield None
                return
            try:
                yield dl.path
            finally:
                if dl.path is not None:
                    dl.path.unlink(missing_ok=True)

    # -- sources ---------------------------------------------------------------------

    def _file(self, ref: str, path: Path, sig: str | None) -> Fetched:
        from podmgr import aci
        from podmgr.schema import parse_image_manifest

        with self._screened(path, sig, str(path) + ".asc") as sig_path:
            manifest_bytes = aci.read_manifest(path, limits=self.store.limits)
            name = parse_image_manifest(manifest_bytes).name
            with self._checked(path, sig_path, name) as check:
                info = self.store.add(path, manifest_bytes=manifest_bytes, check=check)
        return Fetched(ref, info.id, info.name, "file", info.verified, info.fingerprint)

    def _url(
        self,
        ref: str,
        url: str,
        sig: str | None,
        *,
        sig_url: str | None = None,
        want_name: str | None = None,
        expected_id: str | None = None,
        source: str = "url",
    ) -> Fetched:
        from podmgr.storerecords import Remote

        remote = self.store.remote(url)
        if remote is not None and self._fresh(remote):
            return self._stored(ref, remote.image_id)
        if self.policy is PullPolicy.NEVER:
            raise NotFoundError(
                f"image {url} is not in the store and --pull-policy=never forbids fetching it",
                hint="fetch it first, or use --pull-policy=new",
            )
        name = _download_name(url)
        with self.store.lock(f"url-{name}"):
            remote = self.store.remote(url)
            if remote is not None and self._fresh(remote):
                return self._stored(ref, remote.image_id)
            dl = self._download(url, name, remote)
            if dl.not_modified:
                assert remote is not None
                self.store.record_remote(
                    dataclasses.replace(
                        remote,
                        etag=dl.etag or remote.etag,
                        last_modified=dl.last_modified or remote.last_modified,
                        max_age=dl.max_age,
                        downloaded=time.time(),
                    )
                )
                return self._stored(ref, remote.image_id)
            assert dl.path is not None
            try:
                info = self._import_download(
                    dl.path, sig, sig_url or url + ".asc", want_name, expected_id
                )
            finally:
                dl.path.unlink(missing_ok=True)
            self.store.record_remote(
                Remote(url, dl.etag, dl.last_modified, dl.max_age, time.time(), info.id)
            )
        return Fetched(ref, info.id, info.name, source, info.verified, info.fingerprint)

    def _fresh(self, remote: Any) -> bool:
        if self.policy is not PullPolicy.UPDATE:
            return True
        return bool(remote.max_age) and remote.downloaded + remote.max_age > time.time()

    def _download(self, url: str, name: str, remote: Any) -> Any:
        from podmgr.fetch.http import CacheInfo, download

        cache = CacheInfo(remote.etag, remote.last_modified) if remote is not None else None
        bar = self.cfg.progress(url) if self.cfg.progress is not None else None
        try:
            return download(
                url,
                self.store.downloads,
                cache=cache,
                options=self.http,
                progress=bar,
                name=name,
                max_size=self.store.limits.max_archive or None,
            )
        finally:
            if bar is not None:
                bar.close()

    def _import_download(
        self,
        path: Path,
        sig: str | None,
        sig_url: str,
        want_name: str | None,
        expected_id: str | None,
    ) -> Any:
        from podmgr import aci
        from podmgr.schema import parse_image_manifest

        if want_name is not None:
            # The name is known: the check starts before anything the server sent is
            # parsed, so that a bad signature is what is reported if parsing fails.
            with (
                self._screened(path, sig, sig_url, want_name) as sig_path,
                self._checked(path, sig_path, want_name) as check,
            ):
                manifest_bytes = aci.read_manifest(path, limits=self.store.limits)
                name = parse_image_manifest(manifest_bytes).name
                if name != want_name:
                    raise InvalidError(
                        f"discovery for {want_name} served an image named {name}",
                        hint="the server's discovery templates point at the wrong image",
                    )
                return self.store.add(
                    path,
                    take=True,
                    expected_id=expected_id,
                    manifest_bytes=manifest_bytes,
                    check=check,
                )
        with self._screened(path, sig, sig_url) as sig_path:
            manifest_bytes = aci.read_manifest(path, limits=self.store.limits)
            name = parse_image_manifest(manifest_bytes).name
            with self._checked(path, sig_path, name) as check:
                return self.store.add(
                    path,
                    take=True,
                    expected_id=expected_id,
                    manifest_bytes=manifest_bytes,
                    check=check,
                )

    def _app(
        self, ref: str, app: AppString, sig: str | None, expected_id: str | None = None
    ) -> Fetched:
        from podmgr.fetch.discovery import discover

        if expected_id is not None and self.store.has(expected_id):
            return self._stored(ref, expected_id)
        if self.policy is not PullPolicy.UPDATE:
            found = self.store.find(app.name, {k: app.labels[k] for k in app.explicit})
            if found and expected_id is None:
                return self._stored(ref, found[0])
            if self.policy is PullPolicy.NEVER:
                raise NotFoundError(
                    f"image {app} is not in the store and --pull-policy=never forbids fetching it",
                    hint="fetch it first, or use --pull-policy=new",
                )
        endpoints = discover(app, self.http)
        last: NetworkError | None = None
        for url, sig_url in zip(endpoints.acis, endpoints.signatures, strict=True):
            try:
                return self._url(
                    ref,
                    url,
                    sig,
                    sig_url=sig_url,
                    want_name=app.name,
                    expected_id=expected_id,
                    source="discovery",
                )
            except NetworkError as e:
                log.debug("fetching %s failed: %s", url, e)
                last = e
        assert last is not None
        raise last

    # -- dependencies ----------------------------------------------------------------

    def _dependencies(self, image_id: str, depth: int) -> None:
        from podmgr.fetch.discovery import AppString, host_os_arch

        if image_id in self._deps_done:
            return
        if depth > MAX_DEPTH:
            raise InvalidError(f"dependencies of {image_id[:19]} nest deeper than {MAX_DEPTH}")
        for dep in self.store.manifest(image_id).dependencies:
            labels = dep.labels.as_dict()
            try:
                dep_id = self.store.resolve_dependency(dep)
            except (NotFoundError, InvalidError) as e:
                if isinstance(e, InvalidError) and dep.image_id is None:
                    raise
                os_, arch = host_os_arch()
                app = AppString(
                    dep.image_name,
                    {"version": "latest", "os": os_, "arch": arch, **labels},
                    frozenset(labels),
                )
                dep_id = self._app(str(app), app, None, dep.image_id).id
                if dep.image_id is not None and dep_id != dep.image_id:
                    raise InvalidError(
                        f"dependency {dep.image_name}: image ID mismatch: the manifest asks "
                        f"for {dep.image_id[:19]}…, discovery gave {dep_id[:19]}…"
                    ) from None
            self._dependencies(dep_id, depth + 1)
        self._deps_done.add(image_id)
