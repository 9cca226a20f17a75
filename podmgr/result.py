"""Result objects returned by commands, rendered by the CLI as text or versioned JSON.

Results are plain dataclasses (not pydantic) so that commands which print little
do not pay pydantic's import cost at start-up.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol

#: Version of the JSON document layout printed with ``--format=json``.
JSON_VERSION = 1


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Result(Protocol):
    """What every command result provides."""

    kind: ClassVar[str]

    def text(self) -> str: ...


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def to_json(result: Result) -> str:
    """The versioned JSON document for a result."""
    data = result.data() if hasattr(result, "data") else _jsonable(result)
    doc = {"version": JSON_VERSION, "kind": result.kind, "data": data}
    return json.dumps(doc, indent=2, sort_keys=False)
