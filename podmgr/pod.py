"""Pods: prepare, start, run, stop, rm, and the exit hook. No daemon: state is the pod
directory (:mod:`podmgr.podstate`) plus what systemd knows about the pod's units.

- **prepare** turns CLI options (or a pod manifest) into a reified pod manifest, renders
  every app's image, resolves users, groups, exec paths and mount targets inside the
  rendered root, and writes the pod directory atomically.
- **start** (:mod:`podmgr.launch`) creates the units in one batch of
  ``StartTransientUnit`` calls: the pod's slice, then per app an overlay mount unit (aux)
  and a service; then registers the pod with machined. Nothing of podmgr stays running.
  prepare writes that batch to ``plan.json`` (:func:`unit_batch`), so that start needs
  neither the manifests nor their models.
- When an app ends for good, its ``OnSuccess``/``OnFailure`` unit runs ``podmgr
  _app-exited``, which records the exit status in the pod directory and applies the exit
  policy by stopping the pod's slice.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from podmgr import execshim, launch, logger, metadata, podstate, rootfs, tokens, units
from podmgr import isolators as iso
from podmgr.errors import InvalidError, UsageError, require_root
from podmgr.fsutil import rmtree
from podmgr.names import bad_char, new_uuid
from podmgr.podstate import AppRecord, PodRecord
from podmgr.units import NetMode, RestartPolicy

log = logger.get(__name__)


# Re-exported: the CLI builds these without importing this module (podmgr.podspec).
from podmgr.podspec import AppSpec as AppSpec  # noqa: E402
from podmgr.podspec import PodSpec as PodSpec  # noqa: E402

# ---- images ----------------------------------------------------------------------------


class Images:
    """The image store as the pods code needs it."""

    def __init__(self, state: Path, fetch_options: Any = None) -> None:
        from podmgr.store import Store

        self.store = Store.open(state)
        self.fetch_options = fetch_options

    def fetch(self, refs: Sequence[str]) -> list[str]:
        from podmgr.imagefetch import fetch_images

        return list(fetch_images(list(refs), store=self.store, options=self.fetch_options))

    def manifest(self, image_id: str) -> Any:
        return self.store.manifest(image_id)

    def render(self, image_id: str) -> Path:
        return Path(self.store.render(image_id))

    def pin(self, uuid: str, ids: Sequence[str]) -> None:
        self.store.pin(uuid, list(ids))

    def unpin(self, uuid: str) -> None:
        self.store.unpin(uuid)


# ---- prepare ---------------------------------------------------------------------------


#: appc executor annotation: the app speaks sd_notify(3), so it is ready when it says so.
NOTIFY_ANNOTATION = "appc.io/executor/supports-systemd-notify"


def supports_notify(image_manifest: Any) -> bool:
    return str(image_manifest.annotations.get(NOTIFY_ANNOTATION) or "").lower() == "true"


def _default_app_name(image_name: str) -> str:
    from podmgr.schema import is_ac_name

    base = image_name.rsplit("/", 1)[-1]
    return base if is_ac_name(base) else "app"


def _merged_app(
    image_app: Any, spec: AppSpec, env_layers: Sequence[Mapping[str, str]]
) -> dict[str, Any]:
    """The image's app with the command line's overrides, as appc JSON."""
    base: dict[str, Any] = {}
    if image_app is not None:
        # Reuse the schema's canonical serialisation of the app section.
        base = dict(image_app.model_dump(mode="json", by_alias=True, exclude_none=True))
    if spec.exec is not None or spec.args:
        exec_ = list(base.get("exec") or [])
        if spec.exec is not None:
            exec_ = [spec.exec]
        if not exec_:
            raise UsageError("the image has no exec; give --exec")
        base["exec"] = [exec_[0], *spec.args] if spec.args else exec_
    if not base.get("exec"):
        raise InvalidError("the image has no app to run", hint="give --exec")
    base.setdefault("user", "0")
    base.setdefault("group", "0")
    if spec.user is not None:
        base["user"] = spec.user
    if spec.group is not None:
        base["group"] = spec.group
    if spec.supplementary_gids is not None:
        base["supplementaryGIDs"] = spec.supplementary_gids
        base.pop("supplementaryGids", None)
    if spec.working_dir is not None:
        base["workingDirectory"] = spec.working_dir
    # Precedence: inherited < image < --set-env-file < --set-env < --environment.
    env: dict[str, str] = dict(env_layers[0]) if env_layers else {}
    for item in base.get("environment", []):
        env[item["name"]] = item["value"]
    for layer in env_layers[1:]:
        env.update(layer)
    env.update(spec.environment)
    base["environment"] = [{"name": k, "value": v} for k, v in env.items()]
    if spec.isolators:
        by_name = {i["name"]: i for i in base.get("isolators", [])}
        for i in spec.isolators:
            by_name[i["name"]] = i
        base["isolators"] = list(by_name.values())
    return base


def _check_overlaps(app: str, targets: Sequence[str]) -> None:
    norm = sorted("/" + t.strip("/") for t in targets)
    for a, b in itertools.pairwise(norm):
        if a == b or b.startswith(a.rstrip("/") + "/"):
            raise InvalidError(
                f"app {app}: mount targets {a} and {b} overlap",
                hint="mount volumes at paths that do not contain one another",
            )


#: The largest --pod-manifest podmgr reads; the limit of an image's manifest.
MAX_POD_MANIFEST = 1 << 20


def build_manifest(spec: PodSpec, images: Images) -> tuple[Any, dict[str, Any]]:
    """The reified pod manifest for a spec, and the image manifests by image ID."""
    from podmgr.schema import parse_pod_manifest

    if spec.pod_manifest is not None:
        try:
            # Bounded, as an image's manifest is: /dev/zero is no manifest.
            with open(spec.pod_manifest, "rb") as f:
                raw = f.read(MAX_POD_MANIFEST + 1)
        except OSError as e:
            raise UsageError(
                f"cannot read pod manifest {spec.pod_manifest}: {e.strerror}"
            ) from None
        if len(raw) > MAX_POD_MANIFEST:
            raise InvalidError(
                f"pod manifest {spec.pod_manifest} is larger than {MAX_POD_MANIFEST} bytes"
            )
        given = parse_pod_manifest(raw, template=True)
        refs = [a.image.id or a.image.name or "" for a in given.apps]
        ids = images.fetch(refs)
        doc = given.model_dump(mode="json", by_alias=True, exclude_none=True)
        for app, iid in zip(doc["apps"], ids, strict=True):
            app["image"]["id"] = iid
        manifests = {iid: images.manifest(iid) for iid in ids}
        for app in doc["apps"]:
            if "app" not in app:
                im = manifests[app["image"]["id"]]
                if im.app is None:
                    raise InvalidError(f"app {app['name']}: the image has no app to run")
                app["app"] = im.app.model_dump(mode="json", by_alias=True, exclude_none=True)
        return parse_pod_manifest(doc), manifests

    if not spec.apps:
        raise UsageError("no image given", hint="podmgr run IMAGE [--- IMAGE …]")
    ids = images.fetch([a.image for a in spec.apps])
    manifests = {iid: images.manifest(iid) for iid in ids}
    inherited = dict(os.environ) if spec.inherit_env else {}
    apps = []
    seen: set[str] = set()
    for a, iid in zip(spec.apps, ids, strict=True):
        im = manifests[iid]
        name = a.name or _default_app_name(im.name)
        if name in seen:
            raise InvalidError(f"duplicate app name {name!r}", hint="give each app its own --name")
        seen.add(name)
        app_doc = _merged_app(im.app, a, [inherited, spec.environment])
        mounts = [{"volume": v, "path": t} for v, t in a.mounts]
        explicit = {v for v, _ in a.mounts}
        vol_names = {v["name"] for v in spec.volumes}
        for mp in app_doc.get("mountPoints", []):
            if mp["name"] in vol_names and mp["name"] not in explicit:
                mounts.append({"volume": mp["name"], "path": mp["path"]})
        _check_overlaps(name, [m["path"] for m in mounts])
        apps.append(
            {
                "name": name,
                "image": {
                    "id": iid,
                    "name": im.name,
                    "labels": [{"name": lb.name, "value": lb.value} for lb in im.labels.root],
                },
                "app": app_doc,
                "readOnlyRootFS": a.readonly_rootfs,
                "mounts": mounts,
            }
        )
    pod_doc: dict[str, Any] = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": apps,
        "volumes": spec.volumes,
    }
    if spec.user_annotations:
        pod_doc["userAnnotations"] = spec.user_annotations
    if spec.user_labels:
        pod_doc["userLabels"] = spec.user_labels
    if spec.ports:
        pod_doc["ports"] = spec.ports
    return parse_pod_manifest(pod_doc), manifests


# (uid_t) -1 and its 16-bit form are "no ID" to the kernel's and libc's calls, and
# systemd refuses them; above them an ID does not fit uid_t at all.
_NO_ID = (0xFFFF, 0xFFFFFFFF)


def _check_id(where: str, what: str, value: int) -> None:
    if not 0 <= value < 0xFFFFFFFF or value in _NO_ID:
        raise InvalidError(
            f"{where}: {what} {value} is not a valid ID",
            hint="IDs are 0 to 4294967294, without 65535",
        )


def _check_path(app: str, what: str, path: str) -> None:
    # As systemd's path_is_normalized(): no "." or ".." and no "//" (a trailing "/" is
    # fine); it refused "/../../../etc" at start, with a misleading error.
    parts = path.rstrip("/").split("/")[1:]
    if not path.startswith("/") or "//" in path or {".", ".."} & set(parts) or bad_char(path):
        raise InvalidError(
            f"app {app}: {what} {path!r} is not a normalized absolute path",
            hint="give it without '.' and '..' and control characters, such as /srv/app",
        )


def _check_working_dir(app: str, wd: str) -> None:
    _check_path(app, "working directory", wd)


def _check_hands_on(app: str, exec_: Sequence[str], env: Mapping[str, str]) -> None:
    """Refuse what systemd would refuse at start (or D-Bus could not carry): a NUL in
    the command line, control characters in an environment variable's value."""
    for i, arg in enumerate(exec_):
        if "\0" in arg:
            what = "exec" if i == 0 else f"argument {i}"
            raise InvalidError(f"app {app}: {what} has a NUL character")
    for k, v in env.items():
        c = bad_char(v.replace("\t", " ").replace("\n", " "))
        if c:
            raise InvalidError(
                f"app {app}: environment variable {k} has a control character ({c})",
                hint="values may hold tabs and newlines, not other control characters",
            )


def _check_user_maps(manifest: Any) -> None:
    """userLabels and userAnnotations: keys without whitespace or control characters,
    values without control characters (they are printed by list and status, and served
    by the metadata service)."""
    for what, m in (
        ("user label", manifest.user_labels),
        ("user annotation", manifest.user_annotations),
    ):
        for k, v in (m or {}).items():
            if not k or bad_char(k, space=True):
                raise InvalidError(
                    f"{what} {k!r} is not a valid name",
                    hint="names are non-empty, without whitespace or control characters",
                )
            if bad_char(v):
                raise InvalidError(f"{what} {k}: the value has a control character")


def _prepare_volumes(manifest: Any, pdir: Path, final: Path) -> dict[str, tuple[str, bool, bool]]:
    """name -> (host source, read-only, recursive); creates ``empty`` volumes."""
    out = {}
    for v in manifest.volumes:
        if v.kind == "host":
            src = rootfs.check_host_source(v.source or "")
            out[v.name] = (str(src), bool(v.read_only), v.recursive is not False)
        else:
            _check_id(f"volume {v.name}", "uid", v.uid or 0)
            _check_id(f"volume {v.name}", "gid", v.gid or 0)
            d = pdir / "volumes" / v.name
            d.mkdir(parents=True)
            os.chmod(d, int(v.mode or "0755", 8))
            os.chown(d, v.uid or 0, v.gid or 0)
            out[v.name] = (str(final / "volumes" / v.name), bool(v.read_only), True)
    return out


def prepare(state: Path, spec: PodSpec) -> PodRecord:
    """Create a prepared pod; on any error, leave nothing behind."""
    require_root("preparing a pod")
    images = Images(state, spec.fetch_options)
    manifest, manifests = build_manifest(spec, images)
    uuid = new_uuid()
    pods = podstate.pods_dir(state)
    pods.mkdir(parents=True, exist_ok=True)
    final = pods / uuid
    tmp = pods / f".prep-{uuid}"
    tmp.mkdir(mode=0o700)
    token = ""
    try:
        images.pin(uuid, sorted({a.image.id for a in manifest.apps}))
        record = _prepare_in(tmp, final, uuid, manifest, manifests, images, spec)
        # The metadata service's token index; before the rename, so no pod lacks one.
        token = record.metadata_token
        tokens.register(state, uuid, token)
        os.rename(tmp, final)
    except BaseException:
        rmtree(tmp, ignore_errors=True)
        if token:
            tokens.unregister(state, token)
        with contextlib.suppress(Exception):
            images.unpin(uuid)
        raise
    return record


def _prepare_in(
    tmp: Path,
    final: Path,
    uuid: str,
    manifest: Any,
    manifests: dict[str, Any],
    images: Images,
    spec: PodSpec,
) -> PodRecord:
    from podmgr import network
    from podmgr.schema import dump_manifest

    volumes = _prepare_volumes(manifest, tmp, final)
    ports = network.resolve_ports(manifest)
    if ports and spec.net is not NetMode.CNI:
        raise UsageError(f"--port needs a pod network, not --net={spec.net.value}")
    network.check_sysctls(pod_sysctls(manifest), spec.net.value)
    names = spec.names or network.Names()
    network.check_names(names)
    iso.check_applicable(manifest.isolators, "pod")
    _check_user_maps(manifest)
    hostname = names.hostname or units.machine_name(uuid)
    (tmp / "shm").mkdir(mode=0o1777)
    os.chmod(tmp / "shm", 0o1777)
    records = []
    for app in manifest.apps:
        a = app.app
        lower = images.render(app.image.id)
        adir = tmp / "apps" / app.name
        upper = adir / "upper"
        for d in ("upper", "work", "rootfs"):
            (adir / d).mkdir(parents=True, mode=0o755)
        (adir / "image-manifest").write_text(dump_manifest(manifests[app.image.id]))
        env = {e.name: e.value for e in a.environment.root}
        path_env = env.get("PATH", units.APPC_PATH)
        exec_ = list(a.exec or ())
        _check_hands_on(app.name, exec_, env)
        iso.check_applicable(a.isolators, f"app {app.name}")
        exec_[0] = rootfs.find_exec(lower, exec_[0], path_env)
        uid = rootfs.lookup_user(lower, a.user)
        gid = rootfs.lookup_group(lower, a.group)
        _check_id(f"app {app.name}", "user", uid)
        _check_id(f"app {app.name}", "group", gid)
        for g in a.supplementary_gids or ():
            _check_id(f"app {app.name}", "supplementary group", g)
        wd = a.working_directory or "/"
        _check_working_dir(app.name, wd)
        rootfs.check_working_dir(lower, wd)
        binds = []
        for m in app.mounts:
            if m.volume not in volumes:
                raise InvalidError(f"app {app.name}: mount names unknown volume {m.volume!r}")
            src, ro, rec = volumes[m.volume]
            _check_path(app.name, "mount target", m.path)
            target = rootfs.ensure_mount_target(lower, upper, m.path)
            mp_ro = any(p.read_only for p in a.mount_points if p.path == m.path)
            binds.append((src, target, ro or mp_ro, rec))
        network.write_etc(lower, upper, names, hostname, net=spec.net.value)
        if names.hostname:
            env.setdefault("HOSTNAME", names.hostname)
        handlers = {h.name: tuple(h.exec) for h in a.event_handlers}
        fdir = final / "apps" / app.name
        restart = next((s.restart for s in spec.apps if s.name == app.name), None)
        if restart is None and len(spec.apps) == len(manifest.apps):
            restart = spec.apps[list(manifest.apps).index(app)].restart
        records.append(
            AppRecord(
                name=app.name,
                image_id=app.image.id,
                image_name=app.image.name or manifests[app.image.id].name,
                unit=units.app_service(uuid, app.name),
                exec=tuple(exec_),
                uid=uid,
                gid=gid,
                supplementary_gids=tuple(a.supplementary_gids or ()),
                working_dir=wd,
                environment=env,
                pre_start=handlers.get("pre-start"),
                post_stop=handlers.get("post-stop"),
                read_only_rootfs=app.read_only_root_fs,
                binds=tuple(binds),
                restart=restart or RestartPolicy.NO,
                notify=supports_notify(manifests[app.image.id]),
                lower=(str(lower),),
                rootfs=str(fdir / "rootfs"),
                rootfs_unit=units.mount_unit(str(fdir / "rootfs")),
            )
        )
    (tmp / "manifest").write_text(dump_manifest(manifest))
    record = PodRecord(
        uuid=uuid,
        created=podstate.now(),
        exit_policy=spec.exit_policy,
        net=spec.net,
        networks=spec.networks if spec.net is NetMode.CNI else (),
        ports=tuple((m.name, m.protocol, m.container_port, m.host_port, m.host_ip) for m in ports),
        apps=tuple(records),
        metadata_token=tokens.new_token(),
        user_annotations=spec.user_annotations,
        user_labels=spec.user_labels,
        hostname=names.hostname,
    )
    podstate.save(tmp, record)
    # What start replays without the models (podmgr.launch); paths are the final ones.
    state = final.parent.parent
    launch.write_plan(tmp, unit_batch(state, record, manifest), pod_sysctls(manifest))
    return record


# ---- start -----------------------------------------------------------------------------


def exit_hook(state: Path, uuid: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The exit hook's command and environment (see :mod:`podmgr.hook`)."""
    import jeepney

    import podmgr

    # -S and an explicit path: no site .pth files, and only what the hook imports.
    paths = {str(Path(m.__file__ or "").resolve().parent.parent) for m in (podmgr, jeepney)}
    argv = (sys.executable, "-S", "-m", "podmgr.hook", str(state), uuid)
    return argv, (f"PYTHONPATH={':'.join(sorted(paths))}",)


def plan(
    state: Path, record: PodRecord, isolators: Sequence[Any] = (), manifest: Any = None
) -> units.PodPlan:
    from podmgr.fetch.appstring import host_os_arch

    pdir = podstate.pod_dir(state, record.uuid)
    m = manifest if manifest is not None else reified_manifest(state, record.uuid)
    host_arch = host_os_arch()[1]

    def native(app: str) -> bool:
        ra = m.app(app) if hasattr(m, "app") else None
        arch = ra.image.labels.get("arch") if ra is not None else None
        return arch is None or arch == host_arch

    apps = tuple(
        units.AppPlan(
            name=a.name,
            exec=a.exec,
            uid=a.uid,
            gid=a.gid,
            supplementary_gids=a.supplementary_gids,
            working_dir=a.working_dir,
            environment=a.environment,
            pre_start=a.pre_start,
            post_stop=a.post_stop,
            isolators=tuple(isolators_of(state, record.uuid, a.name, m)),
            read_only_rootfs=a.read_only_rootfs,
            binds=a.bind_list(),
            restart=a.restart,
            notify=a.notify,
            rootfs=a.rootfs,
            sockets=tuple(sockets_of(state, record.uuid, a.name, m)),
            native_abi=native(a.name),
        )
        for a in record.apps
    )
    hook_argv, hook_env = exit_hook(state, record.uuid)
    netns_path = sysfs_path = None
    if record.net is not NetMode.HOST:
        from podmgr import network

        netns_path, sysfs_path = network.netns_path(record.uuid), network.sysfs_path(record.uuid)
    return units.PodPlan(
        uuid=record.uuid,
        apps=apps,
        isolators=tuple(isolators),
        net=record.net,
        exit_hook=hook_argv,
        exit_hook_env=hook_env,
        shm_dir=str(pdir / "shm"),
        metadata_url=metadata.metadata_url(record),
        netns_path=netns_path,
        sysfs_path=sysfs_path,
        net_hook=net_hook(state, record.uuid, hook_argv),
        shim=execshim.path(),
        hostname=record.hostname,
    )


def net_hook(state: Path, uuid: str, exit_argv: Sequence[str]) -> tuple[str, ...]:
    """The pod network unit's ExecStop=: ``python -S -m podmgr.network down STATE UUID``,
    with the exit hook's interpreter flags and PYTHONPATH."""
    return (*exit_argv[:2], "-m", "podmgr.network", "down", str(state), uuid)


def reified_manifest(state: Path, uuid: str) -> Any:
    from podmgr.schema import parse_pod_manifest

    return parse_pod_manifest((podstate.pod_dir(state, uuid) / "manifest").read_bytes())


def isolators_of(state: Path, uuid: str, app: str | None, manifest: Any = None) -> list[Any]:
    m = manifest if manifest is not None else reified_manifest(state, uuid)
    if app is None:
        return list(m.isolators)
    ra = m.app(app) if hasattr(m, "app") else None
    return list(ra.app.isolators) if ra is not None and ra.app is not None else []


def sockets_of(state: Path, uuid: str, app: str, manifest: Any = None) -> list[units.SocketPort]:
    """The app's ports declared ``socketActivated: true``, in the manifest's order."""
    m = manifest if manifest is not None else reified_manifest(state, uuid)
    ra = m.app(app)
    ports = ra.app.ports if ra is not None and ra.app is not None else ()
    out = []
    for p in ports:
        if not p.socket_activated:
            continue
        if p.protocol.lower() not in units.SOCKET_TYPES:
            raise InvalidError(
                f"app {app}: port {p.name!r} is socket-activated over {p.protocol!r}",
                hint="socket activation takes tcp and udp ports",
            )
        out.append(units.SocketPort(p.name, p.protocol.lower(), p.port, p.count))
    return out


def unit_batch(state: Path, record: PodRecord, manifest: Any = None) -> launch.Batch:
    """The StartTransientUnit calls that start a pod, in order."""
    p = plan(state, record, isolators_of(state, record.uuid, None, manifest), manifest)
    batch: launch.Batch = []
    if p.netns_path:
        batch.append((units.net_unit(record.uuid), units.net_unit_properties(p), []))
    services = [units.app_service(record.uuid, a.name) for a in p.apps]
    for i, a in enumerate(p.apps):
        others = [s for s in services if s != services[i]]
        props = units.app_properties(a, p, others=others)
        hook_props = units.exit_hook_properties(p, a.name)
        aux = [
            (units.exit_hook_unit(record.uuid, a.name), hook_props),
            (units.exit_hook_unit(record.uuid, a.name, failed=True), hook_props),
        ]
        if a.sockets:
            aux.append((units.socket_unit(record.uuid, a.name), units.socket_properties(a, p)))
        batch.append((services[i], props, aux))
    # The slice is made with the first unit in it, not started in a call of its own: the
    # units in it start it (Slice= implies Requires=), in the first call's transaction.
    name, props, aux = batch[0]
    batch[0] = (name, props, [(units.pod_slice(record.uuid), units.slice_properties(p)), *aux])
    return batch


def replan(state: Path, uuid: str) -> tuple[launch.Batch, dict[str, str]]:
    """The start plan of a pod whose ``plan.json`` this podmgr cannot replay."""
    record = podstate.load(podstate.pod_dir(state, uuid))
    manifest = reified_manifest(state, uuid)
    return unit_batch(state, record, manifest), pod_sysctls(manifest)


def pod_sysctls(manifest: Any) -> dict[str, str]:
    return {
        k: v for i in manifest.isolators if i.name == "os/unix/sysctl" for k, v in i.value.items()
    }
