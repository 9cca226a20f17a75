"""Man pages and completions generated from the click tree (podmgr.manpage)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from podmgr.cli import cli
from podmgr.manpage import esc, generate

REPO = Path(__file__).resolve().parents[2]


def every_command() -> dict[str, click.Command]:
    """page name -> command, walked here and now, so new commands are covered unasked."""
    out: dict[str, click.Command] = {}

    def visit(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        out["-".join(path)] = cmd
        ctx = click.Context(cmd, info_name=path[-1], parent=parent)
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None, f"{' '.join(path)} lists {name} but cannot load it"
                if not sub.hidden:
                    visit(sub, [*path, name], ctx)

    visit(cli, ["podmgr"], None)
    return out


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("docs")
    generate(d)
    return d


def test_every_command_has_exactly_one_page(out: Path) -> None:
    commands = every_command()
    assert len(commands) > 3
    assert {p.stem for p in (out / "man1").glob("*.1")} == set(commands)


def test_each_page_names_its_command_and_its_options(out: Path) -> None:
    for name, cmd in every_command().items():
        text = (out / "man1" / f"{name}.1").read_text()
        assert f'.TH "{esc(name.upper())}" "1"' in text
        assert f"\n{esc(name)} \\- " in text
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert esc(param.opts[0]) in text, (name, param.opts)
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for sub in cmd.list_commands(ctx):
                if not getattr(cmd.get_command(ctx, sub), "hidden", True):
                    assert f"\\fB{esc(name + '-' + sub)}\\fR(1)" in text


def test_pages_are_plain_ascii_roff(out: Path) -> None:
    for page in (out / "man1").glob("*.1"):
        page.read_bytes().decode("ascii")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_pages_render_without_warnings(out: Path) -> None:
    for page in sorted((out / "man1").glob("*.1")):
        p = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True
        )
        assert p.returncode == 0 and p.stderr == "", (page.name, p.stderr)


def test_bash_completion_passes_shellcheck(out: Path) -> None:
    script = out / "completions/bash/podmgr"
    assert shutil.which("shellcheck"), "shellcheck is in .ci/apt-packages"
    p = subprocess.run(
        ["shellcheck", "--shell=bash", "--severity=style", str(script)],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout


def test_bash_completion_completes_lazily_loaded_subcommands(out: Path, tmp_path: Path) -> None:
    # The script runs `podmgr` at completion time; point it at this checkout.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "podmgr"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m podmgr "$@"\n')
    wrapper.chmod(0o755)
    script = out / "completions/bash/podmgr"
    probe = (
        f"source {script}\n"
        "COMP_WORDS=(podmgr image ''); COMP_CWORD=2\n"
        "_podmgr_completion podmgr\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    p = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "build" in p.stdout.split(), p.stdout


def test_zsh_and_fish_completions_call_podmgr(out: Path) -> None:
    zsh = (out / "completions/zsh/_podmgr").read_text()
    fish = (out / "completions/fish/podmgr.fish").read_text()
    assert zsh.startswith("#compdef podmgr")
    assert "_PODMGR_COMPLETE=zsh_complete" in zsh
    assert "_PODMGR_COMPLETE=fish_complete" in fish


def test_module_entry_point(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "podmgr.manpage", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "man1/podmgr.1").is_file()
