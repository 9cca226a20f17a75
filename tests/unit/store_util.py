"""Helpers for store, render and fetch tests: build small images from dicts."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from podmgr import aci

#: Content of a file, or a directory ("dir", mode), or a symlink ("link", target).
Entry = bytes | str | tuple[str, Any]


def manifest(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    deps: list[dict[str, Any]] | None = None,
    whitelist: list[str] | None = None,
) -> dict[str, Any]:
    m: dict[str, Any] = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name}
    if labels:
        m["labels"] = [{"name": k, "value": v} for k, v in labels.items()]
    if deps:
        m["dependencies"] = deps
    if whitelist:
        m["pathWhitelist"] = whitelist
    return m


def dep(name: str, image_id: str | None = None, **labels: str) -> dict[str, Any]:
    d: dict[str, Any] = {"imageName": name}
    if image_id:
        d["imageID"] = image_id
    if labels:
        d["labels"] = [{"name": k, "value": v} for k, v in labels.items()]
    return d


def build_image(
    out: Path,
    man: dict[str, Any],
    files: dict[str, Entry] | None = None,
    compression: aci.Compression = aci.Compression.GZIP,
) -> tuple[Path, str]:
    """Write an image archive at ``out``; returns (path, image ID)."""
    layout = out.with_name(out.name + ".layout")
    (layout / "rootfs").mkdir(parents=True)
    (layout / "manifest").write_text(json.dumps(man))
    dirs: list[tuple[Path, int]] = []
    for rel, content in sorted((files or {}).items()):
        p = layout / "rootfs" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple) and content[0] == "dir":
            p.mkdir(exist_ok=True)
            dirs.append((p, content[1]))
        elif isinstance(content, tuple) and content[0] == "link":
            os.symlink(content[1], p)
        else:
            p.write_bytes(content.encode() if isinstance(content, str) else content)
    for p, mode in dirs:
        p.chmod(mode)
    res = aci.build(layout, out, compression)
    return out, res.id


def tree_files(root: Path) -> dict[str, str]:
    """path -> 'dir MODE' | 'link TARGET' | file content, below ``root``."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = f"link {os.readlink(p)}"
            elif p.is_dir():
                out[rel] = f"dir {p.stat().st_mode & 0o7777:o}"
            else:
                out[rel] = p.read_text()
    return out
