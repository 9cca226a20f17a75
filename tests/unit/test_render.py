"""Rendering by ace.md "Filesystem Setup": order, overwriting, whitelists, dependency IDs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from store_util import build_image, dep, manifest, tree_files

from podmgr.errors import InvalidError, NotFoundError
from podmgr.render import Whitelist
from podmgr.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


class Images:
    def __init__(self, store: Store, tmp: Path) -> None:
        self.store, self.tmp = store, tmp
        self.ids: dict[str, str] = {}
        self.n = 0

    def add(self, name: str, files: dict[str, Any], **kw: Any) -> str:
        self.n += 1
        out = self.tmp / f"{name.replace('/', '_')}-{self.n}.aci"
        path, iid = build_image(out, manifest(name, **kw), files)
        self.store.add(path)
        self.ids[name] = iid
        return iid


@pytest.fixture
def images(store: Store, tmp_path: Path) -> Images:
    return Images(store, tmp_path)


def order(store: Store, iid: str, ids: dict[str, str]) -> list[str]:
    names = {v: k for k, v in ids.items()}
    return [names[layer.image_id] for layer in store.plan(iid)]


def test_depth_first_in_listed_order(images: Images, store: Store) -> None:
    images.add("b", {"f": "b"})
    images.add("d", {"f": "d"})
    images.add("c", {"f": "c"}, deps=[dep("d")])
    a = images.add("a", {"own": "a"}, deps=[dep("b"), dep("c")])
    assert order(store, a, images.ids) == ["b", "d", "c", "a"]
    rootfs = store.render(a)
    assert (rootfs / "f").read_text() == "c"
    assert (rootfs / "own").read_text() == "a"
    assert (rootfs.parent / "layers.json").exists()
    assert store.render(a) == rootfs  # rendered once, reused


def test_shared_dependency_examined_once_per_path(images: Images, store: Store) -> None:
    images.add("d", {"f": "d"})
    images.add("b", {"f": "b"}, deps=[dep("d")])
    images.add("c", {"g": "c"}, deps=[dep("d")])
    a = images.add("a", {}, deps=[dep("b"), dep("c")])
    assert order(store, a, images.ids) == ["d", "b", "d", "c", "a"]
    # D's second pass overwrites B's f: later layers win.
    assert (store.render(a) / "f").read_text() == "d"


def test_upper_file_hides_a_dependency_directory(images: Images, store: Store) -> None:
    images.add("base", {"etc/conf/a": "1", "etc/conf/b": "2"})
    top = images.add("top", {"etc/conf": "now a file"}, deps=[dep("base")])
    files = tree_files(store.render(top))
    assert files["etc/conf"] == "now a file"
    assert "etc/conf/a" not in files


def test_directory_mode_overridden_by_upper_image(images: Images, store: Store) -> None:
    images.add("base", {"data": ("dir", 0o700), "data/x": "x"})
    top = images.add("top", {"data": ("dir", 0o755), "data/y": "y"}, deps=[dep("base")])
    files = tree_files(store.render(top))
    assert files["data"] == "dir 755"
    assert files["data/x"] == "x" and files["data/y"] == "y"


def test_symlink_to_directory_is_replaced_not_followed(
    images: Images, store: Store, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    images.add("base", {"lib": ("link", str(outside)), "usr/lib/keep": "k"})
    top = images.add("top", {"lib/x.so": "x"}, deps=[dep("base")])
    rootfs = store.render(top)
    assert not (rootfs / "lib").is_symlink()
    assert (rootfs / "lib/x.so").read_text() == "x"
    assert list(outside.iterdir()) == []


def test_whitelists_at_several_levels(images: Images, store: Store) -> None:
    images.add("d", {"a": "d", "b": "d", "c": "d", "etc/x/y": "d", "etc/z": "d"})
    # C exposes only a, b and etc/x/ (a directory subtree).
    images.add("c", {"c": "c"}, deps=[dep("d")], whitelist=["/a", "/b", "/c", "/etc/x/"])
    # A keeps only a, c and etc/x/y from everything below it.
    a = images.add("a", {"own": "a"}, deps=[dep("c")],
                   whitelist=["/a", "/c", "/own", "/etc/x/y"])  # fmt: skip
    files = tree_files(store.render(a))
    assert {k: v for k, v in files.items() if not k.startswith("etc")} == {
        "a": "d",
        "c": "c",
        "own": "a",
    }
    assert files["etc/x/y"] == "d"
    assert "etc/z" not in files
    # C alone keeps its own view.
    files_c = tree_files(store.render(images.ids["c"]))
    assert set(files_c) == {"a", "b", "c", "etc", "etc/x", "etc/x/y"}


def test_whitelist_filters_the_image_itself() -> None:
    wl = Whitelist(["/usr/bin/tool", "/etc/ssl/"])
    assert wl.allows("/usr/bin/tool", False)
    assert wl.allows("/usr", True) and not wl.allows("/usr", False)
    assert wl.allows("/etc/ssl/certs/x", False)
    assert not wl.allows("/usr/bin/other", False)


def test_dependency_image_id_must_match(images: Images, store: Store) -> None:
    images.add("base", {"f": "1"}, labels={"version": "1"})
    wrong = "sha512-" + "0" * 128
    top = images.add("top", {}, deps=[dep("base", wrong)])
    with pytest.raises(InvalidError, match="image ID mismatch"):
        store.render(top)
    ok = images.add("top2", {}, deps=[dep("base", images.ids["base"], version="1")])
    assert (store.render(ok) / "f").read_text() == "1"


def test_dependency_matched_by_labels(images: Images, store: Store) -> None:
    images.add("base", {"f": "1"}, labels={"version": "1"})
    images.add("base", {"f": "2"}, labels={"version": "2"})
    top = images.add("top", {}, deps=[dep("base", version="1")])
    assert (store.render(top) / "f").read_text() == "1"
    missing = images.add("top3", {}, deps=[dep("base", version="3")])
    with pytest.raises(NotFoundError, match="base,version=3"):
        store.render(missing)
