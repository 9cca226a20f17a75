"""packaging/: the systemd-sysext image and the RPM spec."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MKSYSEXT = REPO / "packaging/mksysext"
SPEC = REPO / "packaging/podmgr.spec"
UNITS = sorted(
    p.name
    for p in (REPO / "units").iterdir()
    if p.suffix in (".service", ".socket", ".timer", ".slice")
)

needs_squashfs = pytest.mark.skipif(
    shutil.which("mksquashfs") is None or shutil.which("unsquashfs") is None,
    reason="squashfs-tools is not installed (it is in .ci/apt-packages)",
)


def mksysext(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    return subprocess.run([str(MKSYSEXT), *args, str(out)], capture_output=True, text=True, env=env)


def release(image: Path) -> dict[str, str]:
    text = subprocess.run(
        ["unsquashfs", "-cat", str(image), "usr/lib/extension-release.d/extension-release.podmgr"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if line)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mksquashfs") is None:
        pytest.skip("squashfs-tools is not installed")
    out = tmp_path_factory.mktemp("sysext")
    p = mksysext(out)
    assert p.returncode == 0, p.stderr
    return out / "podmgr.raw"


@needs_squashfs
def test_sysext_layout(image: Path) -> None:
    listing = subprocess.run(
        ["unsquashfs", "-d", "", "-lc", str(image)], capture_output=True, text=True, check=True
    ).stdout.split()
    # systemd-sysext merges /usr (and /opt) only; anything else would be ignored.
    assert all(p.startswith("/usr/") for p in listing), listing
    files = set(listing)
    assert "/usr/bin/podmgr" in files
    assert "/usr/lib/extension-release.d/extension-release.podmgr" in files
    assert {f"/usr/lib/systemd/system/{u}" for u in UNITS} <= files
    assert "/usr/lib/tmpfiles.d/podmgr.conf" in files
    assert "/usr/share/man/man1/podmgr.1.gz" in files
    assert "/usr/share/bash-completion/completions/podmgr" in files
    assert "/usr/lib/podmgr/site/podmgr/__main__.py" in files
    assert not any("__pycache__" in f for f in files)


@needs_squashfs
def test_sysext_release_file_merges_on_any_host(image: Path) -> None:
    rel = release(image)
    assert rel["ID"] == "_any"
    # With ID=_any systemd-sysext checks no version; one would only mislead.
    assert "VERSION_ID" not in rel and "SYSEXT_LEVEL" not in rel
    # Pure Python and no bundled wheels: no architecture to name.
    assert "ARCHITECTURE" not in rel
    assert rel["SYSEXT_SCOPE"] == "system"
    assert rel["EXTENSION_RELOAD_MANAGER"] == "1"


@needs_squashfs
def test_sysext_for_one_os_names_its_level(tmp_path: Path) -> None:
    p = mksysext(tmp_path, "--id", "flatcar", "--sysext-level", "1.0")
    assert p.returncode == 0, p.stderr
    rel = release(tmp_path / "podmgr.raw")
    assert rel["ID"] == "flatcar" and rel["SYSEXT_LEVEL"] == "1.0"
    p = mksysext(tmp_path, "--id", "fedora", "--version-id", "41")
    assert p.returncode == 0, p.stderr
    assert release(tmp_path / "podmgr.raw")["VERSION_ID"] == "41"


def test_sysext_refuses_release_fields_systemd_would_reject(tmp_path: Path) -> None:
    # systemd-sysext needs VERSION_ID or SYSEXT_LEVEL unless ID=_any.
    assert mksysext(tmp_path, "--id", "fedora").returncode == 2
    assert mksysext(tmp_path, "--version-id", "41").returncode == 2


@needs_squashfs
def test_sysext_podmgr_runs_from_the_image_tree(image: Path, tmp_path: Path) -> None:
    """The tree is complete: podmgr imports and finds its own metadata from it alone."""
    root = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-d", str(root), str(image)], check=True)
    site = root / "usr/lib/podmgr/site"
    p = subprocess.run(
        [
            sys.executable,
            "-s",
            "-c",
            f"import sys; sys.path.insert(0, {str(site)!r}); "
            "from podmgr.__main__ import entry; entry()",
            "--version",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "podmgr 0.1.0"
    wrapper = (root / "usr/bin/podmgr").read_text()
    assert "/usr/lib/podmgr/site" in wrapper and "from podmgr.__main__ import entry" in wrapper


@pytest.mark.skipif(shutil.which("rpmspec") is None, reason="rpm is not installed")
def test_rpm_spec_parses_and_installs_every_unit() -> None:
    p = subprocess.run(["rpmspec", "-P", str(SPEC)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "warning" not in p.stderr.lower(), p.stderr
    spec = p.stdout
    for unit in UNITS:
        assert f"/usr/lib/systemd/system/{unit}" in spec
    for path in (
        "/usr/lib/tmpfiles.d/podmgr.conf",
        "/usr/share/bash-completion/completions/podmgr",
    ):
        assert path in spec
    version = subprocess.run(
        ["rpmspec", "-q", "--srpm", "--qf", "%{VERSION}", str(SPEC)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    from podmgr import __version__

    assert version == __version__


def test_debian_changelog_version_matches_the_package() -> None:
    from podmgr import __version__

    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    assert first.startswith(f"podmgr ({__version__})"), first


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_packaging_scripts_pass_shellcheck() -> None:
    scripts = [str(REPO / "packaging/mksysext"), str(REPO / "packaging/deb")]
    p = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_pyproject_version_matches_the_package() -> None:
    """`podmgr --version` prints podmgr.__version__ (not importlib.metadata's, 30 ms)."""
    import tomllib

    from podmgr import __version__

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
