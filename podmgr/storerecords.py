"""The image store's records (:mod:`podmgr.store` returns them).

Apart from the store, which ``podmgr run`` opens: dataclasses imports inspect (with ast,
dis and tokenize), 5-7 ms of every run, which needs none of these.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ImageInfo:
    id: str
    name: str
    labels: dict[str, str]
    #: Bytes of the archive as stored.
    size: int
    uncompressed_size: int
    imported: float
    last_used: float | None
    verified: bool
    #: Primary fingerprint of the key whose signature was verified.
    fingerprint: str | None

    @property
    def version(self) -> str | None:
        return self.labels.get("version")


@dataclasses.dataclass
class Remote:
    url: str
    etag: str | None
    last_modified: str | None
    max_age: int | None
    downloaded: float
    image_id: str


@dataclasses.dataclass
class GCReport:
    images: list[str] = dataclasses.field(default_factory=list)
    trees: list[str] = dataclasses.field(default_factory=list)
    stale_pins: list[str] = dataclasses.field(default_factory=list)
