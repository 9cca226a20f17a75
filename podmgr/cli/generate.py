"""``podmgr generate unit``: a ``.pod`` file (docs/pod-files.md) or the systemd unit that
podmgr-generator makes of it, from the options of ``podmgr run``."""

from __future__ import annotations

import re
import shlex
from typing import Any

import click

from podmgr.cli.pod import _SETTINGS, APP_OPTIONS_HELP, _app_cmd, _split_apps, pod_options

# click parameter of `podmgr run` -> [Pod] key. Options absent from this podmgr's
# `run` are skipped, so the table may name options that are still being built.
_POD = [
    ("net", "Net"),
    ("port", "Port"),
    ("dns", "DNS"),
    ("dns_search", "DNSSearch"),
    ("dns_opt", "DNSOption"),
    ("hosts_entry", "HostsEntry"),
    ("hostname", "Hostname"),
    ("exit_policy", "ExitPolicy"),
    ("volume", "Volume"),
    ("set_env", "Environment"),
    ("set_env_file", "EnvironmentFile"),
    ("inherit_env", "InheritEnvironment"),
    ("insecure_options", "InsecureOptions"),
    ("pull_policy", "PullPolicy"),
    ("user_annotation", "UserAnnotation"),
    ("user_label", "UserLabel"),
    ("pod_manifest", "PodManifest"),
]
_WORDS = {"set_env", "user_annotation", "user_label", "environment"}
_APP = [
    ("user", "User"),
    ("group", "Group"),
    ("supplementary_gids", "SupplementaryGIDs"),
    ("working_dir", "WorkingDirectory"),
    ("environment", "Environment"),
    ("mount", "Mount"),
    ("readonly_rootfs", "ReadOnlyRootFS"),
    ("memory", "Memory"),
    ("cpu", "CPU"),
    ("cpu_shares", "CPUShares"),
    ("oom_score_adj", "OOMScoreAdjust"),
    ("caps_retain", "CapsRetain"),
    ("caps_remove", "CapsRemove"),
    ("seccomp", "Seccomp"),
    ("restart", "Restart"),
]
#: Values that are the defaults of `podmgr run`; leaving them out keeps files short.
_DEFAULTS = {"exit_policy": "on-any-failure", "pull_policy": "new", "restart": "no"}


def _lines(key: str, param: str, value: Any) -> list[str]:
    if value is None or value == "" or value == () or value is False:
        return []
    if _DEFAULTS.get(param) == value:
        return []
    if value is True:
        return [f"{key}=yes"]
    values = list(value) if isinstance(value, tuple | list) else [value]
    if param in _WORDS:
        return [f"{key}={shlex.quote(str(v))}" for v in values]
    return [f"{key}={v}" for v in values]


def _app_name(image: str, taken: set[str]) -> str:
    base = image.rstrip("/").rsplit("/", 1)[-1]
    base = re.sub(r"\.aci$", "", base.split(":", 1)[0]).lower()
    base = re.sub(r"[^a-z0-9]+", "-", base).strip("-") or "app"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def pod_file(kw: dict[str, Any], segments: list[list[str]]) -> str:
    out = ["[Pod]"]
    for param, key in _POD:
        if param in kw:
            out += _lines(key, param, kw[param])
    taken: set[str] = set()
    for seg in segments:
        try:
            app = _app_cmd.make_context("podmgr", list(seg)).params
        except click.ClickException as e:
            raise click.UsageError(f"app {seg[0]!r}: {e.format_message()}") from None
        name = app["name"] or _app_name(app["image"], taken)
        taken.add(name)
        out += ["", f"[App {name}]", f"Image={app['image']}"]
        argv = list(app["args"])
        if app["exec_"]:
            out.append(f"Exec={shlex.join([app['exec_'], *argv])}")
        elif argv:
            out.append(f"Args={shlex.join(argv)}")
        for param, key in _APP:
            out += _lines(key, param, app.get(param))
    return "\n".join(out) + "\n"


@click.group()
def generate() -> None:
    """Generate files for declarative pods (podmgr-generator)."""


@generate.command(context_settings=_SETTINGS, epilog=APP_OPTIONS_HELP)
@click.option(
    "--unit-format",
    "--format",
    "fmt",
    type=click.Choice(["pod", "unit"]),
    default="pod",
    show_default=True,
    help="A .pod file for /etc/podmgr/pods, or the unit podmgr-generator makes of it.",
)
@click.option("--unit-name", default="pod", show_default=True, help="NAME of NAME.pod.")
@click.option("--wanted-by", multiple=True, help="Add [Install] WantedBy=TARGET.")
@pod_options
def unit(fmt: str, unit_name: str, wanted_by: tuple[str, ...], **kw: Any) -> None:
    """Print a .pod file, or a unit, that runs a pod like `podmgr run` would.

    Save the .pod file as /etc/podmgr/pods/NAME.pod and run `systemctl daemon-reload`:
    NAME.service then runs the pod (docs/pod-files.md)."""
    from podmgr import generator
    from podmgr.netspec import Names, check_names

    segments = _split_apps(kw.pop("args"))
    if not segments and not kw.get("pod_manifest"):
        raise click.UsageError("no image given")
    kw.pop("uuid_file_save", None)  # the generated unit keeps its own
    # As `podmgr run` would: a newline in one would also add a line to the .pod file.
    check_names(
        Names(
            dns=tuple(kw["dns"]),
            dns_search=tuple(kw["dns_search"]),
            dns_opt=tuple(kw["dns_opt"]),
            hosts_entries=tuple(kw["hosts_entry"]),
            hostname=kw["hostname"],
        )
    )
    text = pod_file(kw, segments)
    if wanted_by:
        text += "\n[Install]\n" + "".join(f"WantedBy={t}\n" for t in wanted_by)
    if fmt == "unit":
        source = f"/etc/podmgr/pods/{unit_name}.pod"
        try:
            text = generator.unit_text(unit_name, source, generator.parse(text))
        except generator.PodFileError as e:
            raise click.UsageError(f"line {e.line} of the generated file: {e.message}") from None
    click.echo(text, nl=False)
