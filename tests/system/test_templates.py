"""Pod templates: a pod cloned from a template is the pod a full prepare would make."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from podfix import Podmgr, build_image, host_state

from podmgr import podtemplate


@pytest.fixture
def pm(tmp_path: Path) -> Podmgr:
    return Podmgr(tmp_path / "state")


def prepare(pm: Podmgr, args: list[str], *, templates: bool = True) -> tuple[str, str]:
    """(UUID, stderr) of ``podmgr --debug prepare ARGS``."""
    env = dict(os.environ, PODMGR_TEMPLATES="1" if templates else "0")
    p = subprocess.run(
        [sys.executable, "-m", "podmgr", "--debug", "--dir", str(pm.state), "prepare", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip(), p.stderr


def identity(pdir: Path) -> tuple[str, str]:
    rec = json.loads((pdir / "pod.json").read_text())
    return rec["uuid"], rec["metadata_token"]


def tree(pdir: Path) -> dict[str, os.stat_result]:
    return {
        str(Path(root, n).relative_to(pdir)): os.lstat(Path(root, n))
        for root, dirs, files in os.walk(pdir)
        for n in dirs + files
    }


@pytest.fixture
def args(tmp_path: Path, pm: Podmgr) -> list[str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("from the host\n")
    aci = build_image(
        tmp_path / "tpl.aci",
        "example.com/tpl",
        ["/bin/sh", "-c", "cat /data/f; id -u; stat -c %a:%u:%g /scratch/deep; echo $A"],
    )
    pm("fetch", "--insecure-options=image", str(aci))
    return [
        "--volume",
        f"src,kind=host,source={src},readOnly=true",
        "--volume",
        "scratch,kind=empty,mode=0750,uid=1000,gid=50",
        "--set-env",
        "A=from-set-env",
        "--net=none",
        "example.com/tpl",
        "--name",
        "web",
        "--user",
        "alice",
        "--mount",
        "volume=src,target=/data",
        "--mount",
        "volume=scratch,target=/scratch/deep",
        "--memory",
        "64Mi",
        "--caps-remove",
        "CAP_NET_RAW",
        "---",
        "example.com/tpl",
        "--name",
        "second",
        "--exec",
        "/bin/true",
    ]


def test_a_cloned_pod_equals_a_fully_prepared_one(pm: Podmgr, args: list[str]) -> None:
    first, log = prepare(pm, args)
    assert "prepared from template" not in log
    cloned, log = prepare(pm, args)
    assert "prepared from template" in log
    full, log = prepare(pm, args, templates=False)
    assert "prepared from template" not in log
    pods = pm.state / "pods"
    b, c = pods / cloned, pods / full
    old = podtemplate._identity(*identity(b))
    new = podtemplate._identity_like(*identity(b), *identity(c))
    tb, tc = tree(b), tree(c)
    assert sorted(tb) == sorted(tc)
    a_forms = podtemplate._identity(*identity(pods / first))
    for rel, sc in tc.items():
        sb = tb[rel]
        assert (stat.S_IFMT(sb.st_mode), stat.S_IMODE(sb.st_mode), sb.st_uid, sb.st_gid) == (
            stat.S_IFMT(sc.st_mode),
            stat.S_IMODE(sc.st_mode),
            sc.st_uid,
            sc.st_gid,
        ), rel
        if stat.S_ISREG(sc.st_mode):
            data = (b / rel).read_bytes()
            # Nothing of the template pod's identity is left in the clone.
            assert not any(f in data for f in a_forms), rel
            if rel == "pod.json":
                rb = json.loads(podtemplate._rewrite(data, old, new))
                rc = json.loads((c / rel).read_bytes())
                assert {**rb, "created": None} == {**rc, "created": None}
            else:
                assert podtemplate._rewrite(data, old, new) == (c / rel).read_bytes(), rel
        elif stat.S_ISLNK(sc.st_mode):
            assert os.readlink(b / rel) == os.readlink(c / rel)
    # And it runs as a pod should.
    out = pm("run-prepared", cloned).stdout
    assert "web | from the host\nweb | 1000\nweb | 750:1000:50\nweb | from-set-env\n" in out
    for u in (first, full):
        pm("rm", u)
    pm("rm", cloned)
    assert host_state()["mounts"] == []


def test_other_options_or_environment_make_other_templates(pm: Podmgr, args: list[str]) -> None:
    prepare(pm, args)
    _, log = prepare(pm, [*args[:4], "--set-env", "A=other", *args[6:]])
    assert "prepared from template" not in log
    _, log = prepare(pm, ["--inherit-env", *args])
    assert "prepared from template" not in log
    os.environ["PODMGR_TEST_VAR"] = "1"
    try:
        _, log = prepare(pm, ["--inherit-env", *args])
    finally:
        del os.environ["PODMGR_TEST_VAR"]
    assert "prepared from template" not in log
    _, log = prepare(pm, args)
    assert "prepared from template" in log


def test_a_vanished_host_source_fails_as_without_templates(
    pm: Podmgr, args: list[str], tmp_path: Path
) -> None:
    prepare(pm, args)
    (tmp_path / "src" / "f").unlink()
    (tmp_path / "src").rmdir()
    before = sorted(os.listdir(pm.state / "pods"))
    p = pm("prepare", *args, check=False)
    assert p.returncode != 0
    assert "does not exist" in p.stderr and "Traceback" not in p.stderr
    assert sorted(os.listdir(pm.state / "pods")) == before
    from podmgr.store import Store

    pinned = {u for pods in Store.open(pm.state).pins().values() for u in pods}
    assert pinned <= set(before)


def test_a_template_of_another_key_with_the_same_checksum_is_not_used(
    pm: Podmgr, args: list[str]
) -> None:
    """Template directories are named by a checksum of the key; template.json keeps the
    key itself, so a collision is a miss, and the template is made anew."""
    shutil.rmtree(pm.state / "pods" / ".templates", ignore_errors=True)
    prepare(pm, args)
    _, log = prepare(pm, args)
    assert "prepared from template" in log
    (tdir,) = [d for d in (pm.state / "pods" / ".templates").iterdir() if d.is_dir()]
    meta = json.loads((tdir / "template.json").read_text())
    (tdir / "template.json").write_text(json.dumps({**meta, "key": meta["key"] + " "}))
    _, log = prepare(pm, args)
    assert "prepared from template" not in log
    _, log = prepare(pm, args)
    assert "prepared from template" in log


def test_a_template_whose_tree_is_gone_is_dropped(
    pm: Podmgr, args: list[str], tmp_path: Path
) -> None:
    u, _ = prepare(pm, args)
    pm("rm", u)
    pm("image", "rm", "example.com/tpl")
    assert len(list((pm.state / "pods" / ".templates").iterdir())) == 1
    pm("gc")  # drops templates whose images' trees are gone
    assert list((pm.state / "pods" / ".templates").iterdir()) == []
    pm("fetch", "--insecure-options=image", str(tmp_path / "tpl.aci"))
    _, log = prepare(pm, args)
    assert "prepared from template" not in log
    _, log = prepare(pm, args)
    assert "prepared from template" in log


def test_the_cached_path_does_not_import_the_models(pm: Podmgr, args: list[str]) -> None:
    # Start-up latency: pydantic and the manifest models cost 250-350 ms.
    prepare(pm, args)
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from podmgr.__main__ import main\n"
        "def go(*a):\n"
        "    try:\n"
        f"        main(['--dir', {str(pm.state)!r}, *a])\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        f"go('prepare', *{args!r})\n"
        # Nor OpenSSL's hashlib (5 ms) or ipaddress (2-3 ms): the run path is the product.
        # (Of those the interpreter did not import before: site's .pth files may.)
        "heavy = {'pydantic', '_hashlib', 'ipaddress'} & (set(sys.modules) - before)\n"
        "assert not heavy, f'imported: {heavy}'\n"
        "go('list')\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported'\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    uuid = p.stdout.split()[0]
    code = code.replace(f"go('prepare', *{args!r})", f"go('run-prepared', {uuid!r})")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "web | from the host" in p.stdout
