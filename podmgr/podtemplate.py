"""Pod templates: a prepared pod kept per (options, images) and cloned for the next one.

Preparing a pod the full way (:func:`podmgr.pod.prepare`) parses the image manifests and
builds the reified pod manifest with the pydantic models, whose import and set-up alone
cost 250-350 ms, several times what systemd needs to start a pod (``bench/pod_start``).
But for the same options and the same images, prepare's result differs between two pods
only in the pod's identity: its UUID (and the names podmgr derives from it: unit names,
the machine and host name, paths) and its metadata token, plus its creation time.

So after a full prepare, a copy of the fresh pod directory is kept as a template in
``pods/.templates/<key>/``, where ``key`` names every option of the pod spec, the image
IDs the references resolved to, the state directory's path, podmgr's version, location and
interpreter, the host's resolv.conf and hosts when DNS or host options copy them, and the
environment
prepare reads (all of it with ``--inherit-env``). The next prepare with the same key
resolves its image references in the store, copies the template (modes and owners
kept) while replacing the template pod's identity by a new one in every file, re-checks
what depends on the host (host volume sources), pins the images and registers the new
token. Nothing of the models is imported on that path.

Templates are made only when it is safe to reuse them:

- every image is in the store and has no dependencies (the rendered tree is then a
  function of the image ID alone), and the references name stored images (an ID or an
  app string; with ``--pull-policy=update`` or a file or URL the full path runs);
- no ``--pod-manifest`` (its references resolve through the models);
- the pod directory holds only directories, regular files and symbolic links.

A template whose images or trees are gone is dropped on use. At most :data:`KEEP` are
kept (least recently used go). ``PODMGR_TEMPLATES=0`` turns templates off.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import stat
import sys
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from podmgr import __version__, launch, logger, names
from podmgr.errors import PodmgrError, require_root
from podmgr.fsutil import rmtree

if TYPE_CHECKING:
    from podmgr.podspec import PodSpec
    from podmgr.store import Store

log = logger.get(__name__)

#: 2: plan.json 2 (the apps' roots are podmgr's mounts). 3: plan.json 3. 4: the apps'
#: confinement as of podmgr.units.seccomp_properties and the host's sysfs (a template
#: keeps the unit properties it was made with). 5: plan.json 4. 6: an app on the host's network
#: without ProtectKernelTunables= (podmgr.units.KERNEL_TUNABLES). 7: likewise an app with
#: a network of its own, whose /sys is its namespace's own sysfs (PodPlan.sysfs_path).
TEMPLATE_VERSION = 8
#: Templates kept per state directory.
KEEP = 16
#: Environment variables whose values prepare reads (besides --inherit-env's).
_ENV_READ = ("PODMGR_METADATA_URL",)


# NamedTuples, not dataclasses, on the start-up path: dataclasses imports inspect (with
# ast, dis and tokenize), 5-7 ms of every `podmgr run`. And collections.namedtuple at run
# time (typing.NamedTuple's set-up costs three times as much), NamedTuples to mypy.
if TYPE_CHECKING:

    class Source(NamedTuple):
        """A template's inputs: the spec as the key has it (:func:`spec_doc`) and how to
        look its images up in the store again on every use (:func:`lookups`)."""

        spec: dict[str, Any]
        lookups: list[list[Any]]

    class Prepared(NamedTuple):
        """A prepared pod: its UUID and its apps' names; ``source``, when the pod came
        from a template or was kept as one, is what :func:`prepare_again` needs to clone
        it again."""

        uuid: str
        apps: list[str]
        source: Source | None = None

    class _Key(NamedTuple):
        #: The template's directory: a checksum of ``text``, which template.json keeps,
        #: so a collision is a miss. (Not hashlib: OpenSSL's import alone costs 5 ms per
        #: run.)
        name: str
        text: str

else:
    Source = collections.namedtuple("Source", "spec lookups")
    Prepared = collections.namedtuple("Prepared", "uuid apps source", defaults=(None,))
    _Key = collections.namedtuple("_Key", "name text")


def enabled() -> bool:
    return os.environ.get("PODMGR_TEMPLATES", "1") != "0"


def templates_dir(state: Path) -> Path:
    return state / "pods" / ".templates"


def prepare(state: Path, spec: PodSpec) -> Prepared:
    """Prepare a pod: from a template when one fits, else the full way (and keep one)."""
    require_root("preparing a pod")
    from podmgr.store import Store

    key = ids = store = source = None
    if enabled() and spec.pod_manifest is None and _pull_new(spec):
        with contextlib.suppress(PodmgrError):  # the full path reports it
            store = Store.open(state)
        source = Source(spec_doc(spec), lookups([a.image for a in spec.apps]))
        ids = None if store is None else _resolve(store, source.lookups)
        if store is not None and ids is not None:
            key = _key(state, source.spec, ids)
            hit = _clone(state, store, key, source)
            if hit is not None:
                return hit
    from podmgr import pod

    record = pod.prepare(state, spec)
    kept = None
    if store is not None and key is not None and [a.image_id for a in record.apps] == ids:
        try:
            if _save(state, store, key, record):
                kept = source
        except (OSError, PodmgrError) as e:
            log.debug("pod %s not kept as a template: %s", record.uuid, e)
    return Prepared(record.uuid, [a.name for a in record.apps], kept)


def prepare_again(state: Path, source: Source) -> Prepared | None:
    """Prepare a pod from the template that ``source`` names, if it is still the one a
    full :func:`prepare` would take (its references resolve to the same images, and the
    rest of its key holds); None otherwise, and nothing is left behind."""
    require_root("preparing a pod")
    from podmgr.store import Store

    if not enabled():
        return None
    try:
        store = Store.open(state)
    except PodmgrError:
        return None
    ids = _resolve(store, source.lookups)
    if ids is None:
        return None
    return _clone(state, store, _key(state, source.spec, ids), source)


# ---- keys ---------------------------------------------------------------------------------


def _pull_new(spec: PodSpec) -> bool:
    """Whether the spec takes stored images as they are (not ``--pull-policy=update``)."""
    from podmgr.fetch import PullPolicy

    return getattr(spec.fetch_options, "pull_policy", PullPolicy.NEW) is not PullPolicy.UPDATE


def lookups(refs: Sequence[str]) -> list[list[Any]]:
    """How to find each referenced image in the store: ``["id", ID]`` or ``["name", NAME,
    {label: value}]`` (the labels given); ``[]`` for a reference that takes the full
    path (a file or URL)."""
    from podmgr.fetch import ref_kind
    from podmgr.fetch.appstring import parse_app_string

    out: list[list[Any]] = []
    for ref in refs:
        if ref.lower().startswith("sha512-"):
            out.append(["id", ref])
        elif ref_kind(ref) == "name":
            try:
                app = parse_app_string(ref)
            except PodmgrError:
                out.append([])  # the full path reports it
                continue
            out.append(["name", app.name, {k: app.labels[k] for k in app.explicit}])
        else:
            out.append([])
    return out


def _resolve(store: Store, lookups: Sequence[Sequence[Any]]) -> list[str] | None:
    """The stored image IDs the lookups find, or None to take the full path."""
    if not lookups:
        return None
    ids = []
    try:
        for how in lookups:
            if how and how[0] == "id":
                ids.append(store.resolve(how[1]))
            elif how and how[0] == "name":
                found = store.find(how[1], dict(how[2]))
                if not found:
                    return None
                ids.append(found[0])
            else:
                return None
    except PodmgrError:
        return None  # the full path reports it
    return ids


#: Host files prepare copies into a pod when --dns/--dns-search/--dns-opt or
#: --hosts-entry=host ask for them (podmgr.network.resolv_conf and hosts_file).
_HOST_FILES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf", "/etc/hosts")


def _host_files(spec: dict[str, Any]) -> dict[str, str | None]:
    names = spec.get("names") or {}
    if not any(names.get(k) for k in ("dns", "dns_search", "dns_opt", "hosts_entries")):
        return {}
    out: dict[str, str | None] = {}
    import hashlib

    for f in _HOST_FILES:
        try:
            out[f] = hashlib.sha256(Path(f).read_bytes()).hexdigest()
        except OSError:
            out[f] = None
    return out


def _origin(package: str) -> str | None:
    """Where a package would be imported from, without importing it: the first entry of
    sys.path that has it, as the path finder takes it (not importlib.util.find_spec,
    whose import costs every run 0.6 ms)."""
    for entry in sys.path:
        init = os.path.join(entry or os.getcwd(), package, "__init__.py")
        if os.path.isfile(init):
            return init
    return None


def spec_doc(spec: PodSpec) -> dict[str, Any]:
    """The spec as a template's key has it: plain JSON values, without the fetch options
    (which only matter to a full prepare)."""
    import dataclasses

    doc = dataclasses.asdict(dataclasses.replace(spec, fetch_options=None))
    if spec.names is not None:  # a named tuple, which asdict keeps one
        doc["names"] = spec.names._asdict()
    plain: dict[str, Any] = json.loads(json.dumps(doc, default=str))
    return plain


def _key(state: Path, spec: dict[str, Any], ids: Sequence[str]) -> _Key:
    doc = {
        # Paths into the state directory are everywhere in a pod's files.
        "state": os.path.abspath(state),
        "template": TEMPLATE_VERSION,
        "podmgr": __version__,
        # The exit hook's command line (in plan.json) names these.
        "python": sys.executable,
        "package": os.path.dirname(os.path.abspath(__file__)),
        "jeepney": _origin("jeepney"),
        "spec": spec,
        "ids": list(ids),
        "env": dict(os.environ)
        if spec.get("inherit_env")
        else {k: os.environ.get(k) for k in _ENV_READ},
        "host_files": _host_files(spec),
    }
    text = json.dumps(doc, sort_keys=True, default=str)
    return _Key(checksum(text), text)


def checksum(text: str) -> str:
    """A file name for ``text``; whoever uses it compares the text it keeps beside."""
    raw = text.encode()
    return f"{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}{len(raw):x}"


# ---- identity -----------------------------------------------------------------------------


def _identity(uuid: str, token: str) -> list[bytes]:
    """Every spelling of a pod's identity that prepare writes, longest first."""
    forms = {
        uuid,
        names.pod_hex(uuid),
        uuid.replace("-", "\\x2d"),  # systemd-escaped, in mount unit names
        uuid.replace("-", "\\\\x2d"),  # the same inside JSON
        token,
    }
    return sorted((f.encode() for f in forms), key=len, reverse=True)


def _rewrite(data: bytes, old: Sequence[bytes], new: Sequence[bytes]) -> bytes:
    for o, n in zip(old, new, strict=True):
        data = data.replace(o, n)
    return data


class _NotCopyable(Exception):
    pass


def _copy(
    src: Path,
    dst: Path,
    old: Sequence[bytes],
    new: Sequence[bytes],
    *,
    skip: Collection[str] = (),
    edit: Mapping[str, Callable[[bytes], bytes]] | None = None,
) -> None:
    """Copy a pod directory (mode and owner kept), rewriting its identity in every file;
    not the top-level files named in ``skip``, and the top-level ones in ``edit`` through
    their function too (their text once rewritten)."""
    os.mkdir(dst, 0o700)
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        top = rel == Path(".")
        for name in dirs + files:
            if top and name in skip:
                continue
            s, d = Path(root) / name, dst / rel / name
            st = os.lstat(s)
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(d)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                data = _rewrite(s.read_bytes(), old, new)
                if top and edit and name in edit:
                    data = edit[name](data)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            elif stat.S_ISLNK(st.st_mode):
                os.symlink(_rewrite(os.fsencode(os.readlink(s)), old, new), d)
            else:
                raise _NotCopyable(f"{s} is neither a directory, a file nor a symbolic link")
            os.lchown(d, st.st_uid, st.st_gid)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(d, stat.S_IMODE(st.st_mode))
    st = os.lstat(src)
    os.lchown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))


# ---- save and clone -----------------------------------------------------------------------


def _save(state: Path, store: Store, key: _Key, record: Any) -> bool:
    """Keep the pod as the key's template; whether it was kept."""
    ids = [a.image_id for a in record.apps]
    if any(store.dependency_closure(i) != [i] for i in ids):
        return False
    manifest = json.loads((state / "pods" / record.uuid / "manifest").read_bytes())
    host_sources = [v["source"] for v in manifest.get("volumes", []) if v.get("kind") == "host"]
    tdir = templates_dir(state)
    tdir.mkdir(mode=0o700, exist_ok=True)
    tmp = tdir / f".tmp-{os.urandom(8).hex()}"
    try:
        identity = _identity(record.uuid, record.metadata_token)
        _copy(state / "pods" / record.uuid, tmp, identity, identity)
        meta = {
            "version": TEMPLATE_VERSION,
            "podmgr": __version__,
            "key": key.text,
            "uuid": record.uuid,
            "token": record.metadata_token,
            "ids": ids,
            "apps": [a.name for a in record.apps],
            "lowers": [p for a in record.apps for p in a.lower],
            "host_sources": host_sources,
        }
        (tmp / "template.json").write_text(json.dumps(meta))
        final = tdir / key.name
        if final.exists():
            rmtree(final)
        os.rename(tmp, final)
    except _NotCopyable as e:
        log.debug("pod %s not kept as a template: %s", record.uuid, e)
        return False
    finally:
        rmtree(tmp, ignore_errors=True)
    _evict(tdir)
    return True


def _evict(tdir: Path) -> None:
    kept = sorted(
        (d for d in tdir.iterdir() if not d.name.startswith(".")),
        key=lambda d: d.stat().st_mtime,
        reverse=True,
    )
    for d in kept[KEEP:]:
        rmtree(d, ignore_errors=True)


def sweep(state: Path) -> list[str]:
    """Drop the templates whose images' trees are gone (``podmgr gc``)."""
    dropped = []
    with contextlib.suppress(FileNotFoundError):
        for d in templates_dir(state).iterdir():
            if d.name.startswith("."):
                continue  # being saved
            try:
                meta = json.loads((d / "template.json").read_bytes())
                ok = all(Path(p).is_dir() for p in meta["lowers"])
            except (OSError, ValueError, KeyError):
                ok = False
            if not ok:
                rmtree(d, ignore_errors=True)
                dropped.append(d.name)
    return dropped


def _drop(tdir: Path, why: str) -> None:
    log.debug("template %s dropped: %s", tdir.name, why)
    rmtree(tdir, ignore_errors=True)


def _clone(state: Path, store: Store, key: _Key, source: Source) -> Prepared | None:
    from podmgr import rootfs, tokens

    tdir = templates_dir(state) / key.name
    try:
        meta = json.loads((tdir / "template.json").read_bytes())
    except (OSError, ValueError):
        return None
    if meta.get("version") != TEMPLATE_VERSION or meta.get("podmgr") != __version__:
        _drop(tdir, "made by another podmgr")
        return None
    if meta.get("key") != key.text:
        return None  # another key's checksum: this prepare's template replaces it
    if not all(Path(p).is_dir() for p in meta["lowers"]):
        _drop(tdir, "an image's tree is gone")
        return None
    for host_source in meta["host_sources"]:
        rootfs.check_host_source(host_source)  # the error the full path would give
    uuid = names.new_uuid()
    token = tokens.new_token()
    pods = state / "pods"
    tmp = pods / f".prep-{uuid}"
    pinned = registered = False
    try:
        _copy(
            tdir,
            tmp,
            _identity(meta["uuid"], meta["token"]),
            _identity_like(meta["uuid"], meta["token"], uuid, token),
            skip=("template.json",),
            edit={"pod.json": _created_now},
        )
        pinned = True  # pin() may fail half-way: unpin either way
        store.pin(uuid, meta["ids"], dependencies=False)
        tokens.register(state, uuid, token)
        registered = True
        os.rename(tmp, pods / uuid)
    except BaseException as e:
        rmtree(tmp, ignore_errors=True)
        if registered:
            tokens.unregister(state, token)
        if pinned:
            with contextlib.suppress(Exception):
                store.unpin(uuid)
        if isinstance(e, (OSError, PodmgrError, _NotCopyable, KeyError, ValueError)):
            _drop(tdir, str(e))
            return None
        raise
    with contextlib.suppress(OSError):
        os.utime(tdir)  # recently used
    log.debug("pod %s prepared from template %s", uuid, key.name)
    return Prepared(uuid, list(meta["apps"]), source)


def _created_now(data: bytes) -> bytes:
    """A pod.json as the template has it, created now."""
    record = json.loads(data)
    record["created"] = launch.timestamp()
    return json.dumps(record, indent=1).encode()


def _identity_like(old_uuid: str, old_token: str, uuid: str, token: str) -> list[bytes]:
    """The new identity's spellings, in the order :func:`_identity` gives the old one's."""
    pairs = {
        old_uuid: uuid,
        names.pod_hex(old_uuid): names.pod_hex(uuid),
        old_uuid.replace("-", "\\x2d"): uuid.replace("-", "\\x2d"),
        old_uuid.replace("-", "\\\\x2d"): uuid.replace("-", "\\\\x2d"),
        old_token: token,
    }
    return [pairs[o.decode()].encode() for o in _identity(old_uuid, old_token)]
