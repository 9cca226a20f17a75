"""Man pages and shell completions, generated from the click command tree.

    python3 -m podmgr.manpage OUTDIR

writes ``OUTDIR/man1/podmgr.1`` plus one page per command and group
(``podmgr-image-list.1``, …) and ``OUTDIR/completions/{bash/podmgr,zsh/_podmgr,
fish/podmgr.fish}``. The packages run it at build time, so the pages always describe the
commands they ship; nothing generated is checked in.

The tree is walked with ``list_commands``/``get_command``, so lazily loaded commands are
imported here and covered as soon as they are registered in ``COMMANDS``.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

from podmgr import __version__

PROG = "podmgr"
COMPLETE_VAR = "_PODMGR_COMPLETE"


@dataclass
class Page:
    path: tuple[str, ...]  # ("podmgr", "image", "list")
    command: click.Command
    ctx: click.Context

    @property
    def name(self) -> str:
        return "-".join(self.path)


def walk(
    command: click.Command, path: tuple[str, ...] = (PROG,), parent: click.Context | None = None
) -> Iterator[Page]:
    """Every visible command and group beneath ``command``, depth first, itself first."""
    # As make_context does, so that e.g. -h shows up where it works.
    ctx = click.Context(command, info_name=path[-1], parent=parent, **command.context_settings)
    yield Page(path, command, ctx)
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, (*path, name), ctx)


# ---- roff ---------------------------------------------------------------------------


def esc(text: str) -> str:
    """Text as roff prints it literally: backslashes, minus signs, leading dots."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    # groff reads bytes as Latin-1 unless preconv runs; named code points render anywhere.
    out = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in out)
    # A line starting with . or ' would be read as a request.
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in out.split("\n")
    )


def help_text(command: click.Command) -> str:
    text = inspect.cleandoc(command.help or command.short_help or "")
    # click's convention: \f ends what is shown to users.
    return text.split("\f", 1)[0].strip()


def paragraphs(text: str) -> list[str]:
    """Help text as roff paragraphs; click's \\b marks a block that keeps its lines."""
    out = []
    for para in text.split("\n\n"):
        para = para.strip("\n")
        if not para:
            continue
        if para.startswith("\b"):
            body = esc(para[1:].strip("\n"))
            out.append(f".PP\n.nf\n{body}\n.fi")
        else:
            out.append(".PP\n" + esc(" ".join(para.split())))
    return out


def short_help(command: click.Command) -> str:
    return command.get_short_help_str(limit=200).rstrip(".") or PROG


def page_date() -> str:
    # Reproducible builds set SOURCE_DATE_EPOCH; without it the page carries no date
    # rather than the build's.
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return ""
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch)))


def render(page: Page, see_also: list[tuple[str, int]]) -> str:
    cmd, ctx = page.command, page.ctx
    title = esc(page.name.upper())
    lines = [
        f'.TH "{title}" "1" "{page_date()}" "podmgr {esc(__version__)}" "podmgr manual"',
        ".SH NAME",
        f"{esc(page.name)} \\- {esc(short_help(cmd))}",
        ".SH SYNOPSIS",
        f".B {esc(' '.join(page.path))}",
    ]
    pieces = cmd.collect_usage_pieces(ctx)
    if pieces:
        lines.append(esc(" ".join(pieces)))
    desc = paragraphs(help_text(cmd))
    if desc:
        lines += [".SH DESCRIPTION", *desc]
    options = [
        rec
        for param in cmd.get_params(ctx)
        if isinstance(param, click.Option) and (rec := param.get_help_record(ctx)) is not None
    ]
    if options:
        lines.append(".SH OPTIONS")
        for opts, text in options:
            lines += [".TP", f"\\fB{esc(opts)}\\fR", esc(" ".join(text.split())) or "\\&"]
    if len(page.path) > 1:
        lines += [
            ".PP",
            f"The global options of \\fB{PROG}\\fR(1) go before the command name.",
        ]
    if isinstance(cmd, click.Group):
        lines.append(".SH COMMANDS")
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            ref = "-".join((*page.path, name))
            lines += [
                ".TP",
                f"\\fB{esc(name)}\\fR",
                f"{esc(short_help(sub))}. See \\fB{esc(ref)}\\fR(1).",
            ]
    if see_also:
        lines += [
            ".SH SEE ALSO",
            ",\n".join(f"\\fB{esc(n)}\\fR({sec})" for n, sec in see_also),
        ]
    return "\n".join(lines) + "\n"


def man_pages(root: click.Command) -> dict[str, str]:
    """File name -> roff source, for ``root`` and every command beneath it."""
    pages = list(walk(root))
    out = {}
    for page in pages:
        if len(page.path) == 1:
            see = [("systemctl", 1), ("journalctl", 1), ("systemd.unit", 5)]
        else:
            see = [("-".join(page.path[:-1]), 1)]
        out[f"{page.name}.1"] = render(page, see)
    return out


# ---- completions --------------------------------------------------------------------

# click's own bash script fails shellcheck (unquoted expansions, read without -r, and
# COMPREPLY+=($value) splits values). This one speaks the same protocol to the same
# `podmgr` (COMP_WORDS, COMP_CWORD and _PODMGR_COMPLETE=bash_complete in, "type,value"
# lines out), so completion stays dynamic and follows the installed commands.
BASH = """\
# bash completion for podmgr; generated by podmgr.manpage.
# shellcheck shell=bash

_podmgr_completion() {
    local IFS=$'\\n'
    local response completion type value
    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD="$COMP_CWORD" \\
        _PODMGR_COMPLETE=bash_complete "$1" 2>/dev/null) || return 0
    COMPREPLY=()
    for completion in $response; do
        IFS=',' read -r type value <<<"$completion"
        case $type in
            dir) compopt -o dirnames ;;
            file) compopt -o default ;;
            plain) COMPREPLY+=("$value") ;;
        esac
    done
    return 0
}

complete -o nosort -F _podmgr_completion podmgr
"""


def completions(root: click.Command) -> dict[str, str]:
    """Relative path -> script, for bash, zsh and fish."""
    from click.shell_completion import get_completion_class

    out = {"bash/podmgr": BASH}
    for shell, name in (("zsh", "_podmgr"), ("fish", "podmgr.fish")):
        cls = get_completion_class(shell)
        assert cls is not None
        out[f"{shell}/{name}"] = cls(root, {}, PROG, COMPLETE_VAR).source()
    return out


def generate(outdir: Path) -> list[Path]:
    from podmgr.cli import cli

    written = []
    for sub, files in (("man1", man_pages(cli)), ("completions", completions(cli))):
        for name, text in files.items():
            path = outdir / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python3 -m podmgr.manpage OUTDIR", file=sys.stderr)
        return 2
    for path in generate(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
