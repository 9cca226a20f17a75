"""Pod commands: run, start, prepare, run-prepared, status, list, stop, rm, gc, logs,
cat-manifest; and the hidden ``_app-exited`` hook.

``podmgr run [POD OPTIONS] IMAGE [APP OPTIONS] [-- ARGS…] [--- IMAGE [APP OPTIONS]]…``:
pod options come before the first image; app options apply to the image before them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from podmgr.cli import Ctx, emit, format_option

_EXIT = ["on-any-failure", "on-any", "until-all"]
_RESTART = ["no", "on-failure", "always"]


def _kv(value: str, what: str) -> tuple[str, str]:
    if "=" not in value:
        raise click.BadParameter(f"{value!r}: expected {what}=VALUE")
    k, v = value.split("=", 1)
    return k, v


def _opts(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif part:
            out.setdefault("name", part.strip())
    return out


def _bool(v: str) -> bool:
    if v.lower() in ("true", "yes", "1"):
        return True
    if v.lower() in ("false", "no", "0"):
        return False
    raise click.BadParameter(f"{v!r} is not true or false")


def parse_volume(value: str) -> dict[str, Any]:
    """``NAME,kind=host,source=PATH[,readOnly=true][,recursive=false]`` or
    ``NAME,kind=empty[,mode=0755][,uid=N][,gid=N]``."""
    o = _opts(value)
    name = o.pop("name", None)
    if not name:
        raise click.BadParameter(f"{value!r}: the volume needs a NAME first")
    if "/" in name:
        # docker's -v SOURCE:TARGET: a pod declares its volumes, and each app mounts them.
        source, _, target = name.partition(":")
        target = target.split(":", 1)[0] or "/PATH"
        raise click.BadParameter(
            f"{value!r} is docker's -v syntax; podmgr names a volume, then mounts it: "
            f"--volume data,kind=host,source={source} IMAGE --mount volume=data,target={target}"
        )
    vol: dict[str, Any] = {"name": name, "kind": o.pop("kind", "host")}
    for key, conv in (
        ("source", str),
        ("readOnly", _bool),
        ("recursive", _bool),
        ("mode", str),
        ("uid", int),
        ("gid", int),
    ):
        if key in o:
            try:
                vol[key] = conv(o.pop(key))
            except ValueError:
                raise click.BadParameter(f"{value!r}: {key} is not valid") from None
    if o:
        raise click.BadParameter(f"{value!r}: unknown volume option(s) {', '.join(o)}")
    return vol


# ---- app options ---------------------------------------------------------------------


@click.command(name="APP", context_settings={"help_option_names": []})
@click.option("--name")
@click.option("--exec", "exec_")
@click.option("--user")
@click.option("--group")
@click.option("--supplementary-gids")
@click.option("--working-dir")
@click.option("--environment", multiple=True)
@click.option("--mount", multiple=True)
@click.option("--readonly-rootfs", is_flag=True)
@click.option("--memory")
@click.option("--cpu")
@click.option("--cpu-shares", type=int)
@click.option("--oom-score-adj", type=int)
@click.option("--caps-retain")
@click.option("--caps-remove")
@click.option("--seccomp")
@click.option("--restart", type=click.Choice(_RESTART), default="no")
@click.argument("image")
@click.argument("args", nargs=-1)
def _app_cmd(**kw: Any) -> dict[str, Any]:
    return kw


APP_OPTIONS_HELP = """\b
App options (after IMAGE; `--` then arguments; `---` starts the next app):
  --name NAME  --exec PATH  --user U  --group G  --supplementary-gids 1,2
  --working-dir DIR  --environment K=V  --mount volume=NAME,target=PATH
  --readonly-rootfs  --memory 128Mi  --cpu 500m  --cpu-shares N  --oom-score-adj N
  --caps-retain CAP,..  --caps-remove CAP,..
  --seccomp mode=retain|remove[,errno=E],SYSCALL,..  --restart no|on-failure|always"""


def _caps(value: str) -> list[str]:
    return [
        c.strip().upper() if c.strip().upper().startswith("CAP_") else "CAP_" + c.strip().upper()
        for c in value.split(",")
        if c.strip()
    ]


def _app_spec(segment: list[str]) -> Any:
    from podmgr.options import RestartPolicy
    from podmgr.podspec import AppSpec

    if not segment:
        raise click.UsageError("'---' must be followed by an image")
    try:
        ctx = _app_cmd.make_context("podmgr", list(segment))
    except click.ClickException as e:
        raise click.UsageError(f"app {segment[0]!r}: {e.format_message()}") from None
    kw = ctx.params
    isolators: list[dict[str, Any]] = []
    if kw["memory"]:
        isolators.append({"name": "resource/memory", "value": {"limit": kw["memory"]}})
    if kw["cpu"]:
        isolators.append({"name": "resource/cpu", "value": {"limit": kw["cpu"]}})
    if kw["cpu_shares"] is not None:
        isolators.append({"name": "os/linux/cpu-shares", "value": kw["cpu_shares"]})
    if kw["oom_score_adj"] is not None:
        isolators.append({"name": "os/linux/oom-score-adj", "value": kw["oom_score_adj"]})
    if kw["caps_retain"]:
        isolators.append(
            {"name": "os/linux/capabilities-retain-set", "value": {"set": _caps(kw["caps_retain"])}}
        )
    if kw["caps_remove"]:
        isolators.append(
            {"name": "os/linux/capabilities-remove-set", "value": {"set": _caps(kw["caps_remove"])}}
        )
    if kw["seccomp"]:
        parts = [p.strip() for p in kw["seccomp"].split(",") if p.strip()]
        mode, errno, calls = None, None, []
        for p in parts:
            if p.startswith("mode="):
                mode = p.split("=", 1)[1]
            elif p.startswith("errno="):
                errno = p.split("=", 1)[1]
            else:
                calls.append(p)
        if mode not in ("retain", "remove"):
            raise click.UsageError("--seccomp needs mode=retain or mode=remove")
        val: dict[str, Any] = {"set": calls}
        if errno:
            val["errno"] = errno
        isolators.append({"name": f"os/linux/seccomp-{mode}-set", "value": val})
    mounts = []
    for m in kw["mount"]:
        o = _opts(m)
        if "volume" not in o or "target" not in o:
            raise click.UsageError(f"--mount {m!r}: expected volume=NAME,target=PATH")
        mounts.append((o["volume"], o["target"]))
    gids = None
    if kw["supplementary_gids"]:
        try:
            gids = [int(g) for g in kw["supplementary_gids"].split(",") if g]
        except ValueError:
            raise click.UsageError("--supplementary-gids takes numbers: 100,200") from None
    return AppSpec(
        image=kw["image"],
        name=kw["name"],
        exec=kw["exec_"],
        args=list(kw["args"]),
        user=kw["user"],
        group=kw["group"],
        supplementary_gids=gids,
        working_dir=kw["working_dir"],
        environment=dict(_kv(e, "--environment K") for e in kw["environment"]),
        mounts=mounts,
        readonly_rootfs=kw["readonly_rootfs"],
        isolators=isolators,
        restart=RestartPolicy(kw["restart"]),
    )


def _split_apps(args: tuple[str, ...]) -> list[list[str]]:
    segments: list[list[str]] = [[]]
    for a in args:
        if a == "---":
            segments.append([])
        else:
            segments[-1].append(a)
    return [s for s in segments if s] if any(segments) else []


#: An environment file holds a few variables; a larger one (/dev/zero) is refused
#: before it fills the memory.
MAX_ENV_FILE = 1 << 20


def _env_file(path: str) -> dict[str, str]:
    out = {}
    try:
        # Not only regular files: a pipe (--set-env-file <(…)) is one way to pass secrets.
        with open(path, "rb") as f:
            data = f.read(MAX_ENV_FILE + 1)
    except OSError as e:
        raise click.UsageError(f"--set-env-file {path}: {e.strerror}") from None
    if len(data) > MAX_ENV_FILE:
        raise click.UsageError(f"--set-env-file {path}: larger than {MAX_ENV_FILE} bytes")
    for n, raw in enumerate(data.split(b"\n"), 1):
        # Where, never what: the file may hold secrets.
        if b"\0" in raw:
            raise click.UsageError(f"--set-env-file {path}:{n}: a NUL character")
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise click.UsageError(f"--set-env-file {path}:{n}: not UTF-8 text") from None
        if line and not line.startswith("#"):
            if "=" not in line:
                raise click.UsageError(f"--set-env-file {path}:{n}: expected K=VALUE")
            k, v = line.split("=", 1)
            out[k] = v
    return out


def pod_options(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("--pod-manifest", type=click.Path(path_type=Path, dir_okay=False)),
            click.option("--volume", multiple=True, help="NAME,kind=host|empty,…"),
            click.option("--set-env", multiple=True, help="K=V for every app."),
            click.option("--set-env-file", multiple=True, help="A file of K=V lines."),
            click.option("--inherit-env", is_flag=True, help="Pass podmgr's environment on."),
            click.option("--uuid-file-save", type=click.Path(path_type=Path, dir_okay=False)),
            click.option("--user-annotation", multiple=True, help="K=V"),
            click.option("--user-label", multiple=True, help="K=V"),
            click.option(
                "--exit-policy",
                type=click.Choice(_EXIT),
                default="on-any-failure",
                show_default=True,
            ),
            click.option(
                "--net",
                multiple=True,
                help="default (the default), host, none, or NAME[:K=V;…] from "
                "/etc/podmgr/net.d; repeat or comma-separate for several networks.",
            ),
            click.option(
                "--port", multiple=True, help="NAME:[HOSTIP:]HOSTPORT: map an app's port."
            ),
            click.option("--dns", multiple=True, help="A resolver's IP, host, or none."),
            click.option("--dns-search", multiple=True, help="A search domain (. for none)."),
            click.option("--dns-opt", multiple=True, help="A resolv.conf option."),
            click.option("--hosts-entry", multiple=True, help="IP=NAME for /etc/hosts, or host."),
            click.option("--hostname", help="The pod's name in /etc/hosts and $HOSTNAME."),
            click.option(
                "--insecure-options", default="", help="Comma-separated: image, http, tls, all."
            ),
            click.option(
                "--pull-policy",
                type=click.Choice(["new", "update", "never"]),
                default="new",
                show_default=True,
            ),
            click.argument("args", nargs=-1, type=click.UNPROCESSED),
        ]
    ):
        f = opt(f)
    return f


_SETTINGS = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def _pod_spec(ctx: Ctx, kw: dict[str, Any]) -> Any:
    from podmgr.netspec import Names, check_names, parse_nets, parse_port
    from podmgr.options import ExitPolicy, NetMode
    from podmgr.podspec import PodSpec

    net_mode, networks = parse_nets(kw["net"])
    names = Names(
        dns=tuple(kw["dns"]),
        dns_search=tuple(kw["dns_search"]),
        dns_opt=tuple(kw["dns_opt"]),
        hosts_entries=tuple(kw["hosts_entry"]),
        hostname=kw["hostname"],
    )
    # Before any image is fetched: these values become lines of the apps' files.
    check_names(names)
    env: dict[str, str] = {}
    for f in kw["set_env_file"]:
        env.update(_env_file(f))
    env.update(dict(_kv(e, "--set-env K") for e in kw["set_env"]))
    apps = [_app_spec(s) for s in _split_apps(kw["args"])]
    if not apps and kw["pod_manifest"] is None:
        raise click.UsageError("no image given")
    return PodSpec(
        apps=apps,
        volumes=[parse_volume(v) for v in kw["volume"]],
        environment=env,
        inherit_env=kw["inherit_env"],
        exit_policy=ExitPolicy(kw["exit_policy"]),
        net=NetMode(net_mode),
        networks=networks,
        ports=[parse_port(v) for v in kw["port"]],
        names=names,
        user_annotations=dict(_kv(a, "--user-annotation K") for a in kw["user_annotation"]),
        user_labels=dict(_kv(a, "--user-label K") for a in kw["user_label"]),
        pod_manifest=kw["pod_manifest"],
        fetch_options=_fetch_options(kw),
    )


def _fetch_options(kw: dict[str, Any]) -> Any:
    from podmgr.fetch import FetchConfig, PullPolicy, parse_insecure

    return FetchConfig(
        pull_policy=PullPolicy(kw["pull_policy"]), insecure=parse_insecure(kw["insecure_options"])
    )


def _prepare(ctx: Ctx, kw: dict[str, Any], command: str | None = None) -> Any:
    """Prepare the pod; for ``command`` (run or start), record the command line for
    :mod:`podmgr.fastpath` when its parse depends on its text alone."""
    from podmgr import podtemplate

    save = kw["uuid_file_save"]
    if save is not None and not save.parent.is_dir():
        raise click.UsageError(f"--uuid-file-save {save}: no directory {save.parent}")
    record = podtemplate.prepare(ctx.dir, _pod_spec(ctx, kw))
    if save is not None:
        from podmgr.fsutil import atomic_write

        try:
            atomic_write(save, record.uuid + "\n")
        except OSError as e:
            # The pod's UUID went nowhere: nothing would ever name the pod, so it goes.
            from podmgr import podctl

            podctl.remove(ctx.dir, record.uuid, bus=ctx.bus)
            raise click.UsageError(f"--uuid-file-save {save}: {e.strerror}") from None
    elif command and not (kw["set_env_file"] or kw["pod_manifest"]):
        from podmgr import fastpath

        fastpath.remember(fastpath.ARGV, command, record.source)
    return record


@click.command(context_settings=_SETTINGS, epilog=APP_OPTIONS_HELP)
@pod_options
@click.option("--interactive", is_flag=True, help="Pass this terminal to the (only) app.")
@click.pass_obj
def run(ctx: Ctx, /, interactive: bool, **kw: Any) -> int:
    """Run a pod attached: stream its output, exit with its exit code."""
    from podmgr import fastpath, launch

    record = _prepare(ctx, kw, None if interactive else "run")
    if interactive:
        from podmgr import enter

        if len(record.apps) != 1:
            from podmgr import podctl

            podctl.remove(ctx.dir, record.uuid, bus=ctx.bus)
            raise click.UsageError("--interactive needs exactly one app")
        return enter.run_interactive(ctx.dir, record.uuid, bus=ctx.bus)
    return launch.run_attached(
        ctx.dir, record.uuid, bus=ctx.bus, emit=fastpath.emitter(len(record.apps) > 1)
    )


@click.command(context_settings=_SETTINGS, epilog=APP_OPTIONS_HELP)
@pod_options
@click.pass_obj
def start(ctx: Ctx, /, **kw: Any) -> None:
    """Start a pod detached; print its UUID once every app has started."""
    from podmgr import fastpath

    record = _prepare(ctx, kw, "start")
    fastpath.start(ctx.dir, record.uuid, ctx.bus)
    click.echo(record.uuid)


@click.command(context_settings=_SETTINGS, epilog=APP_OPTIONS_HELP)
@pod_options
@click.pass_obj
def prepare(ctx: Ctx, /, **kw: Any) -> None:
    """Prepare a pod without starting it; print its UUID."""
    click.echo(_prepare(ctx, kw).uuid)


def _uuid(ctx: Ctx, ref: str | None, uuid_file: Path | None) -> str:
    from podmgr import podlist

    if uuid_file is not None:
        try:
            # A UUID and a newline; a read of more (/dev/zero) would never end.
            with open(uuid_file, "rb") as f:
                ref = f.read(256).decode("utf-8").strip()
        except OSError as e:
            raise click.UsageError(f"--uuid-file {uuid_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise click.UsageError(f"--uuid-file {uuid_file}: not a pod UUID") from None
    if not ref:
        raise click.UsageError("give a pod UUID (or --uuid-file)")
    return podlist.find(ctx.dir, ref)


_uuid_file = click.option(
    "--uuid-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Read the pod's UUID from this file (as --uuid-file-save wrote it).",
)


@click.command("run-prepared")
@click.option("--detach", is_flag=True, help="Return once started, like podmgr start.")
@_uuid_file
@click.argument("uuid", required=False)
@click.pass_obj
def run_prepared(ctx: Ctx, detach: bool, uuid_file: Path | None, uuid: str | None) -> int:
    """Run a prepared pod."""
    from podmgr import launch

    u = _uuid(ctx, uuid, uuid_file)
    if detach:
        launch.start(ctx.dir, u, bus=ctx.bus)
        click.echo(u)
        return 0
    from podmgr.fastpath import emitter

    apps = launch.load_record(ctx.dir / "pods" / u)["apps"]
    return launch.run_attached(ctx.dir, u, bus=ctx.bus, emit=emitter(len(apps) > 1))


@click.command()
@click.option(
    "--wait",
    "wait_",
    is_flag=False,
    flag_value="inf",
    default=None,
    help="Wait until the pod has exited (optionally at most DUR).",
)
@click.option(
    "--wait-ready",
    is_flag=False,
    flag_value="inf",
    default=None,
    help="Wait until every app is running (optionally at most DUR).",
)
@format_option
@_uuid_file
@click.argument("uuid", required=False)
@click.pass_obj
def status(
    ctx: Ctx, wait_: str | None, wait_ready: str | None, uuid_file: Path | None, uuid: str | None
) -> None:
    """Show a pod's state, its apps, exit codes, restarts, PIDs, memory and CPU."""
    from podmgr import duration, launch, podctl

    u = _uuid(ctx, uuid, uuid_file)
    if wait_ is not None:
        timeout = None if wait_ == "inf" else duration.parse(wait_)
        launch.wait(ctx.dir, u, bus=ctx.bus, timeout=timeout)
    if wait_ready is not None:
        timeout = None if wait_ready == "inf" else duration.parse(wait_ready)
        podctl.wait_ready(ctx.dir, u, bus=ctx.bus, timeout=timeout)
    emit(podctl.status(ctx.dir, u, bus=ctx.bus))


@click.command("list")
@click.option("--full", is_flag=True, help="Show full UUIDs.")
@click.option("--no-legend", is_flag=True, help="No header line.")
@format_option
@click.pass_obj
def list_(ctx: Ctx, full: bool, no_legend: bool) -> None:
    """List pods and their states."""
    from podmgr import podlist

    emit(podlist.list_result(ctx.dir, bus=ctx.bus, full=full, legend=not no_legend))


@click.command()
@click.option("--force", is_flag=True, help="SIGKILL instead of SIGTERM.")
@click.option("--all", "all_", is_flag=True, help="Stop every running pod.")
@_uuid_file
@click.argument("uuids", nargs=-1)
@click.pass_obj
def stop(ctx: Ctx, force: bool, all_: bool, uuid_file: Path | None, uuids: tuple[str, ...]) -> None:
    """Stop running pods."""
    from podmgr import launch, podctl

    if all_:
        if uuids or uuid_file is not None:
            from podmgr.errors import UsageError

            raise UsageError("--all stops every running pod: give it no pods")
        for u in podctl.stop_all(ctx.dir, force=force, bus=ctx.bus):
            click.echo(u)
        return
    refs = list(uuids) or [_uuid(ctx, None, uuid_file)]
    for r in refs:
        u = _uuid(ctx, r, None)
        launch.stop(ctx.dir, u, force=force, bus=ctx.bus)
        click.echo(u)


@click.command()
@click.option("-f", "--force", is_flag=True, help="Stop a running pod first, then remove it.")
@_uuid_file
@click.argument("uuids", nargs=-1)
@click.pass_obj
def rm(ctx: Ctx, force: bool, uuid_file: Path | None, uuids: tuple[str, ...]) -> None:
    """Remove exited or prepared pods (running ones too with --force)."""
    from podmgr import podctl

    refs = list(uuids) or [_uuid(ctx, None, uuid_file)]
    uuids_ = [_uuid(ctx, r, None) for r in refs]
    for u in podctl.rm(ctx.dir, uuids_, force=force, bus=ctx.bus):
        click.echo(u)


@click.command()
@click.option(
    "-s",
    "--signal",
    "signal_",
    default="KILL",
    show_default=True,
    help="The signal: a name (TERM, SIGHUP) or a number; one an app can be sent.",
)
@click.option("--app", help="Only this app (default: every running app of the pod).")
@_uuid_file
@click.argument("uuid", required=False)
@click.pass_obj
def kill(ctx: Ctx, signal_: str, app: str | None, uuid_file: Path | None, uuid: str | None) -> None:
    """Send a signal to a running pod's apps."""
    from podmgr import podctl

    sig = podctl.parse_signal(signal_)
    u = _uuid(ctx, uuid, uuid_file)
    for name in podctl.kill(ctx.dir, u, sig, app=app, bus=ctx.bus):
        click.echo(f"{u} {name}")


@click.command()
@click.option("--grace-period", default="30m", show_default=True)
@click.option("--expire-prepared", default="24h", show_default=True)
@click.option("--mark-only", is_flag=True, help="Mark exited pods as garbage; remove nothing.")
@format_option
@click.pass_obj
def gc(ctx: Ctx, grace_period: str, expire_prepared: str, mark_only: bool) -> None:
    """Remove exited pods past the grace period, and expired prepared pods."""
    from datetime import timedelta

    from podmgr import duration, podctl

    emit(
        podctl.gc(
            ctx.dir,
            grace=timedelta(seconds=duration.parse(grace_period)),
            expire_prepared=timedelta(seconds=duration.parse(expire_prepared)),
            mark_only=mark_only,
            bus=ctx.bus,
        )
    )


@click.command()
@click.option("--app", help="Only this app's output.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as the apps write them.")
@click.option("--since", help="As journalctl --since.")
@click.option("-n", "--lines", type=int, help="Only the last N lines (then more with -f).")
@click.option(
    "-t",
    "--timestamps",
    is_flag=True,
    help="Begin each line with its journal time (ISO 8601, microseconds, UTC offset).",
)
@_uuid_file
@click.argument("uuid", required=False)
@click.pass_obj
def logs(
    ctx: Ctx,
    app: str | None,
    follow: bool,
    since: str | None,
    lines: int | None,
    timestamps: bool,
    uuid_file: Path | None,
    uuid: str | None,
) -> None:
    """Show a pod's logs from the journal (also for exited pods)."""
    from podmgr import journal, podstate

    u = _uuid(ctx, uuid, uuid_file)
    record = podstate.load(podstate.pod_dir(ctx.dir, u))
    if app is not None and app not in [a.name for a in record.apps]:
        from podmgr.errors import NotFoundError

        raise NotFoundError(f"pod {u} has no app {app!r}", hint=f"podmgr status {u} lists its apps")
    if lines is not None and lines < 0:
        raise click.UsageError("--lines takes a number of lines, 0 or more")
    from podmgr.fastpath import emitter

    out = emitter(len(record.apps) > 1 and app is None, timestamps=timestamps)
    if follow:
        f = journal.Follower(u, app=app, since=since, lines=lines)
        try:
            for e in f:
                out(e)
        finally:
            f.close()
        return
    for e in journal.read(u, app=app, since=since, lines=lines):
        out(e)


@click.command("cat-manifest")
@click.option("--pretty-print", is_flag=True)
@_uuid_file
@click.argument("uuid", required=False)
@click.pass_obj
def cat_manifest(ctx: Ctx, pretty_print: bool, uuid_file: Path | None, uuid: str | None) -> None:
    """Print a pod's reified pod manifest."""
    import json

    from podmgr import podstate

    u = _uuid(ctx, uuid, uuid_file)
    doc = json.loads((podstate.pod_dir(ctx.dir, u) / "manifest").read_bytes())
    click.echo(json.dumps(doc, indent=2 if pretty_print else None))
