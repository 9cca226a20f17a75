"""podmgr-generator's .pod parsing and unit text, and `podmgr generate unit` round trips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

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
