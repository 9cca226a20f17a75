"""podmgr-generator's .pod parsing and unit text, and `podmgr generate unit` round trips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podmgr import generator as g
from podmgr.cli import cli

pytestmark = pytest.mark.unit

GOOD = """\
# comment
[Unit]
Description=web pod
After=foo.service

[Pod]
Net=host
Volume=data,kind=host,source=/srv/data
Environment=FOO=bar "BAZ=two words"

[App web]
Image=example.com/web:1.0
Exec=/bin/sh -c "echo $HOME 100%"
Mount=volume=data,target=/data
ReadOnlyRootFS=yes
Restart=on-failure

[App side]
Image=/srv/side.aci
Args=--verbose \\
  --twice

[Service]
Restart=always

[Install]
WantedBy=multi-user.target
"""


def test_parse_maps_to_podmgr_run_options() -> None:
    pf = g.parse(GOOD)
    assert g.run_argv(pf) == [
        "--net=host",
        "--volume=data,kind=host,source=/srv/data",
        "--set-env=FOO=bar",
        "--set-env=BAZ=two words",
        "example.com/web:1.0",
        "--name=web",
        "--exec=/bin/sh",
        "--mount=volume=data,target=/data",
        "--readonly-rootfs",
        "--restart=on-failure",
        "--",
        "-c",
        "echo $HOME 100%",
        "---",
        "/srv/side.aci",
        "--name=side",
        "--",
        "--verbose",
        "--twice",
    ]
    assert pf.passthrough["Install"] == ["WantedBy=multi-user.target"]


def test_unit_text() -> None:
    text = g.unit_text("web", "/etc/podmgr/pods/web.pod", g.parse(GOOD))
    assert text.startswith(g.MARKER + "/etc/podmgr/pods/web.pod\n")
    lines = text.splitlines()
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=mixed",
        "Description=web pod",
        "After=foo.service",
        "SourcePath=/etc/podmgr/pods/web.pod",
        "Restart=always",
        "[Install]",
        "WantedBy=multi-user.target",
    ):
        assert line in lines
    assert "Description=podmgr pod web" not in lines  # the file's own wins
    start = next(x for x in lines if x.startswith("ExecStart="))
    # systemd's $ and % are escaped in arguments, but not in the UUID file's specifiers.
    assert '"echo $$HOME 100%%"' in start
    assert '"--uuid-file-save=%t/podmgr/units/%N/uuid"' in start
    assert any(x.startswith("ExecStopPost=-/bin/sh") for x in lines)
    # The [Service] section's own lines come after the generated ones, so they win.
    assert lines.index("Restart=always") > lines.index(start)


@pytest.mark.parametrize(
    ("text", "line", "error"),
    [
        ("[Pod]\nColour=blue\n[App a]\nImage=x\n", 2, "unknown key Colour= in [Pod]"),
        ("[Pod]\n[App a]\nImage=x\nFoo=1\n", 4, "unknown key Foo= in [App a]"),
        ("[Pod]\n", 1, "no [App NAME] section"),
        ("[App a]\nExec=/bin/true\n", 1, "[App a] has no Image="),
        ("[App A_b]\nImage=x\n", 1, "invalid app name"),
        ("[App a]\nImage=x\n[App a]\nImage=y\n", 3, "duplicate section [App a]"),
        ("[Bogus]\n", 1, "unknown section [Bogus]"),
        ("Image=x\n", 1, "assignment outside of any section"),
        ("[App a]\nImage=x\njunk\n", 3, "expected KEY=VALUE"),
        ("[App a]\nImage=x\nExec=/bin/sh -c 'unclosed\n", 3, "No closing quotation"),
        ("[App a]\nImage=x\nRestart=sometimes\n", 3, "expected one of no, on-failure"),
        ("[App a]\nImage=x\nReadOnlyRootFS=maybe\n", 3, "expected yes or no"),
        ("[Pod]\nEnvironment=NOEQUALS\n[App a]\nImage=x\n", 2, "expected NAME=VALUE"),
    ],
)
def test_errors_name_the_line(text: str, line: int, error: str) -> None:
    with pytest.raises(g.PodFileError) as e:
        g.parse(text)
    assert e.value.line == line
    assert error in e.value.message


def test_generator_writes_units_and_error_units(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    (pods / "web.pod").write_text(GOOD)
    (pods / "bad.pod").write_text("[Pod]\nNet=host\nColour=blue\n")
    (pods / "masked.pod").symlink_to("/dev/null")
    (pods / "not-a-pod.txt").write_text("x")
    out = tmp_path / "out"
    units = g.generate(out, search=[str(pods)])
    assert set(units) == {"web.service", "bad.service"}
    bad = (out / "bad.service").read_text()
    assert f"{pods}/bad.pod:3: unknown key Colour= in [Pod]" in bad
    assert "Type=oneshot" in bad and "exit 1" in bad


def test_earlier_directories_win(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "usr").mkdir()
    (tmp_path / "etc/a.pod").write_text("[App x]\nImage=etc\n")
    (tmp_path / "usr/a.pod").write_text("[App x]\nImage=usr\n")
    (tmp_path / "usr/b.pod").write_text("[App x]\nImage=usr\n")
    (tmp_path / "etc/b.pod").symlink_to("/dev/null")
    found = g.find_pod_files([str(tmp_path / "etc"), str(tmp_path / "usr")])
    assert found == {"a": tmp_path / "etc/a.pod"}


def test_the_generator_imports_the_standard_library_only(tmp_path: Path) -> None:
    code = (
        "import sys; from podmgr.generator import main; main([sys.argv[1]]); "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('click', 'pydantic', 'jeepney', 'cryptography')]; print(bad)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert p.stdout.strip() == "[]"


def test_generate_unit_round_trips_through_the_generator() -> None:
    args = [
        "generate", "unit", "--net=host", "--volume", "d,kind=empty", "--set-env", "A=b c",
        "/x/hello.aci", "--environment", "E=1 2", "--exec", "/bin/sh", "--restart", "always",
        "--", "-c", "echo 'hi there'", "---", "example.com/side:1", "--name", "two",
    ]  # fmt: skip
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    pf = g.parse(r.output)
    assert g.run_argv(pf) == [
        "--net=host",
        "--volume=d,kind=empty",
        "--set-env=A=b c",
        "/x/hello.aci",
        "--name=hello",
        "--exec=/bin/sh",
        "--environment=E=1 2",
        "--restart=always",
        "--",
        "-c",
        "echo 'hi there'",
        "---",
        "example.com/side:1",
        "--name=two",
    ]
    r = CliRunner().invoke(cli, [*args[:2], "--format=unit", "--unit-name=web", *args[2:]])
    assert r.exit_code == 0, r.output
    assert "Type=notify" in r.output and "Description=podmgr pod web" in r.output


# ---- hostile .pod files (issue 18) ----------------------------------------------------

SECRET = "hunter2-s3cr3t"


@pytest.mark.parametrize(
    "text",
    [
        f"root:{SECRET}:19000:0:99999:7:::\n",  # /etc/shadow's first line
        f"[App a]\nImage=x\n{SECRET}\n",
        f"[App a]\nImage=x\nReadOnlyRootFS={SECRET}\n",
        f"[App a]\nImage=x\nRestart={SECRET}\n",
        f"[Pod]\nEnvironment=PASSWORD{SECRET}\n[App a]\nImage=x\n",
        f"[Pod]\nEnvironment=PASSWORD='{SECRET}\n[App a]\nImage=x\n",
        f"[App {SECRET}_X]\nImage=x\n",
        f"[{SECRET} x\nImage=x\n",
        f"[App a]\nImage=x\n{SECRET} x=1\n",
        f"[App a]\nImage=x\nEnvironment=P={SECRET}\x00ExecStart=/bin/evil\n",
        f"[App a]\nImage=x\nExec=/bin/{SECRET}\x1b[31m\n",
    ],
)
def test_errors_never_quote_the_value(text: str) -> None:
    """The message goes to the unit's world-readable Description and ExecStart=."""
    with pytest.raises(g.PodFileError) as e:
        g.parse(text)
    assert SECRET not in e.value.message


@pytest.mark.parametrize(
    ("char", "line"),
    [("\x00", 3), ("\x01", 3), ("\x0b", 3), ("\x0c", 3), ("\x1b", 3), ("\x7f", 3),
     ("\x85", 3), ("\u2028", 3), ("\r", 3)],
)  # fmt: skip
def test_control_characters_are_refused_by_line_and_key(char: str, line: int) -> None:
    text = f"[App a]\nImage=x\nEnvironment=A=b{char}ExecStart=/bin/evil\n"
    with pytest.raises(g.PodFileError) as e:
        g.parse(text)
    assert e.value.line == line
    assert f"U+{ord(char):04X}" in e.value.message
    assert "in the value of Environment=" in e.value.message
    assert "evil" not in e.value.message


def test_a_nul_injects_nothing_into_the_unit(tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    pods.mkdir()
    (pods / "inj.pod").write_bytes(b"[App a]\nImage=x\nEnvironment=A=b\x00ExecStart=/bin/evil\n")
    units = g.generate(tmp_path / "out", search=[str(pods)])
    text = units["inj.service"]
    assert "/bin/evil" not in text and "\x00" not in text
    assert f"{pods}/inj.pod:3: control character U+0000 in the value of Environment=" in text


def test_crlf_files_are_read(tmp_path: Path) -> None:
    pf = g.parse("[App a]\r\nImage=x\r\n")
    assert pf.apps[0].values("Image") == ["x"]


def test_x_keys_pass_through() -> None:
    pf = g.parse("[Unit]\nX-Team=web\n[App a]\nImage=x\n")
    assert pf.passthrough["Unit"] == ["X-Team=web"]


def test_only_regular_files_are_read_and_one_bad_file_costs_only_its_unit(
    tmp_path: Path,
) -> None:
    """A .pod linked to /dev/zero made the generator write no unit at all, and a FIFO
    hung it: each such file gets its own failing unit, the others theirs."""
    pods = tmp_path / "pods"
    pods.mkdir()
    for i in range(25):
        (pods / f"good{i}.pod").write_text(f"[App a]\nImage=example.com/x{i}\n")
    (pods / "zero.pod").symlink_to("/dev/zero")
    os.mkfifo(pods / "fifo.pod")  # nobody writes to it: a blocking open would hang
    (pods / "dir.pod").mkdir()
    (pods / "big.pod").write_bytes(b"[App a]\nImage=x\n" + b"#" * g.MAX_POD_FILE)
    (pods / "latin1.pod").write_bytes(b"[App a]\nImage=caf\xe9\n")
    (pods / "loop.pod").symlink_to("loop.pod")
    (pods / "dangling.pod").symlink_to("/nonexistent/x.pod")
    out = tmp_path / "out"
    units = g.generate(out, search=[str(pods)])
    assert len(units) == 32
    for i in range(25):
        assert "ExecStart=/usr/bin/podmgr run" in (out / f"good{i}.service").read_text()
    expected = {
        "zero": "not a regular file",
        "fifo": "not a regular file",
        "dir": "not a regular file",
        "big": f"larger than {g.MAX_POD_FILE} bytes",
        "loop": "Too many levels of symbolic links",
        "dangling": "No such file or directory",
    }
    for name, error in expected.items():
        text = (out / f"{name}.service").read_text()
        assert f"{pods}/{name}.pod: {error}" in text, text
        assert "Type=oneshot" in text and "exit 1" in text
    assert f"{pods}/latin1.pod:2: not UTF-8 text" in (out / "latin1.service").read_text()


def test_read_pod_file_refuses_what_it_cannot_read_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(g.NotAPodFile, match="not a regular file"):
        g.read_pod_file(tmp_path / "fifo")
    (tmp_path / "ok").write_text("x" * 10)
    assert g.read_pod_file(tmp_path / "ok", limit=10) == "x" * 10
    with pytest.raises(g.NotAPodFile, match="larger than 9 bytes"):
        g.read_pod_file(tmp_path / "ok", limit=9)


# Text built from .pod-like pieces, so that examples reach past the first line.
_PIECES = st.sampled_from(
    ["[Pod]", "[App a]", "[App b]", "[Unit]", "[Service]", "[Install]", "[Bogus]", "[App",
     "Image=x", "Exec=/bin/sh -c 'x'", "Args=a \\", "Environment=A=b", "Environment=A",
     "Net=host", "Restart=no", "ReadOnlyRootFS=yes", "UserLabel=k=v", "PodManifest=/p",
     "# c", "", "=", "k=v", "Description=d", f"X={SECRET}", SECRET, "\\"]
)  # fmt: skip
_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(_PIECES, st.text(max_size=20)), max_size=30).map("\n".join),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
def test_parse_raises_only_pod_file_errors_and_writes_one_line_per_setting(text: str) -> None:
    try:
        pf = g.parse(text)
    except g.PodFileError as e:
        assert e.line >= 1
        assert SECRET not in e.message
        assert "\n" not in e.message
        return
    unit = g.unit_text("p", "/etc/podmgr/pods/p.pod", pf)
    assert not g._CONTROL.search(unit.replace("\n", ""))
    starts = [x for x in unit.split("\n") if x.startswith("ExecStart=")]
    assert len(starts) == 1 + sum(e.startswith("ExecStart=") for e in pf.passthrough["Service"])
    g.run_argv(pf)
