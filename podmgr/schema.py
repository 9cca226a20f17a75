"""The appc 0.8.11 schema: types (types.md), image manifest (aci.md), pod manifest (pods.md).

Models are frozen pydantic models whose aliases are the spec's JSON field names. Parse
with :func:`parse_image_manifest` / :func:`parse_pod_manifest` (errors become
:class:`~podmgr.errors.InvalidError` naming the field path) and write with
:func:`dump_manifest`. Isolators live in :mod:`podmgr.isolators`.

Where the reference implementation (``actool``) and the text disagree, the text wins;
each such rule has a comment quoting the text, and tests/unit/test_schema_actool.py lists
them all.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid as _uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    Field,
    RootModel,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from podmgr.errors import InvalidError
from podmgr.isolators import (
    AC_IDENTIFIER_RE,
    APP,
    ISOLATOR_TAGS,
    POD,
    Bool,
    Int,
    Isolator,
    Str,
    _Model,
    check_isolator_set,
    fail,
)

#: The spec version this module implements, written into new manifests.
AC_VERSION = "0.8.11"

# ---------------------------------------------------------------------------------------
# Scalar types (types.md)
#
# Every pattern ends in \Z, not $: with re.match, "$" also matches before a trailing
# newline, so "example.com/x\n" was a valid name (issue 18), stored, and broke listings.

AC_NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*\Z")
_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z",
    re.ASCII,  # \d is any Unicode digit otherwise
)
# types.md: "hash-value" where value is "the hex encoded string of the digest" and the
# only algorithm is sha512, so exactly 128 hex digits. Abbreviated IDs are a CLI
# convenience (looked up in the store), never valid in a manifest.
_IMAGE_ID_RE = re.compile(r"^sha512-[0-9a-fA-F]{128}\Z")
# aci.md: letters, digits and '_' "as outlined in IEEE Std 1003.1-2008" (which also says
# names do not begin with a digit), plus '.' and '-' for practical reasons.
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\Z")
# types.md: RFC3339 date-time, "specifically including the T".
_DATE_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z",
    re.ASCII,
)
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def is_ac_name(value: str) -> bool:
    """Whether ``value`` is an AC Name (``^[a-z0-9]+([-][a-z0-9]+)*$``)."""
    return bool(AC_NAME_RE.match(value))


def is_ac_identifier(value: str) -> bool:
    """Whether ``value`` is an AC Identifier (``^[a-z0-9]+([-._~/][a-z0-9]+)*$``)."""
    return bool(AC_IDENTIFIER_RE.match(value))


def _ac_name_error(value: str) -> str | None:
    if is_ac_name(value):
        return None
    return (
        f"{value!r} is not a valid AC Name: use lower-case letters, digits and single "
        "'-' between them"
    )


def _ac_identifier_error(value: str) -> str | None:
    if is_ac_identifier(value):
        return None
    return (
        f"{value!r} is not a valid AC Identifier: use lower-case letters and digits, "
        "separated by single '-', '.', '_', '~' or '/'"
    )


def validate_ac_name(value: str, what: str = "name") -> str:
    """Return ``value`` if it is an AC Name, else raise InvalidError about ``what``."""
    err = _ac_name_error(value)
    if err:
        raise InvalidError(f"{what}: {err}")
    return value


def validate_ac_identifier(value: str, what: str = "name") -> str:
    """Return ``value`` if it is an AC Identifier, else raise InvalidError about ``what``."""
    err = _ac_identifier_error(value)
    if err:
        raise InvalidError(f"{what}: {err}")
    return value


def is_image_id(value: str) -> bool:
    """Whether ``value`` is a full image ID, ``sha512-`` and 128 hex digits."""
    return bool(_IMAGE_ID_RE.match(value))


def is_semver(value: str) -> bool:
    """Whether ``value`` is a SemVer 2.0.0 version."""
    return bool(_SEMVER_RE.match(value))


def parse_date(value: str) -> datetime:
    """Parse an RFC3339 timestamp (types.md "Timestamps Type"); raise ValueError."""
    m = _DATE_RE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not an RFC3339 timestamp such as 2015-05-18T13:49:28Z")
    frac = (m.group(7) or "")[:7].ljust(7, "0") if m.group(7) else ""
    tz = "+00:00" if m.group(8) in ("Z", "z") else m.group(8)
    try:
        return datetime.fromisoformat(f"{value[:10]}T{value[11:19]}{frac}{tz}")
    except ValueError:
        raise ValueError(f"{value!r} is not a valid date and time") from None


def validate_uuid(value: str) -> str:
    """Return the canonical (lower-case, hyphenated) form of an RFC4122 pod UUID."""
    low = value.lower()
    if not _UUID_RE.match(low):
        raise InvalidError(f"{value!r} is not a UUID such as 6733c088-4f7c-4c62-9d0c-1f47a8b6b3a0")
    return str(_uuid.UUID(low))


def is_http_url(value: str) -> bool:
    """Whether ``value`` is an absolute http(s) URL with a host (aci.md annotations)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _str_check(check: Any) -> AfterValidator:
    def run(value: str) -> str:
        err = check(value)
        if err:
            raise fail(err)
        return value

    return AfterValidator(run)


def _image_id(value: str) -> str:
    if not _IMAGE_ID_RE.match(value):
        raise fail(f"{value!r} is not an image ID: expected 'sha512-' and 128 hex digits")
    return value.lower()


def _ac_version(value: str) -> str:
    if not _SEMVER_RE.match(value):
        raise fail(f"{value!r} is not a SemVer 2.0.0 version such as {AC_VERSION}")
    # types.md: manifests "must be compatible on major AC version series".
    if value.split(".", 1)[0] != AC_VERSION.split(".", 1)[0]:
        raise fail(f"version {value} is not compatible with appc {AC_VERSION}")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise fail(f"{value!r} is not an absolute path")
    return value


def _non_empty(value: str) -> str:
    if not value:
        raise fail("must not be empty")
    return value


ACName = Annotated[Str, _str_check(_ac_name_error)]
ACIdentifier = Annotated[Str, _str_check(_ac_identifier_error)]
ACVersion = Annotated[Str, AfterValidator(_ac_version)]
ImageID = Annotated[Str, AfterValidator(_image_id)]
AbsPath = Annotated[Str, AfterValidator(_abs_path)]
NonEmptyStr = Annotated[Str, AfterValidator(_non_empty)]
UInt = Annotated[Int, Field(ge=0)]
PortNumber = Annotated[Int, Field(ge=1, le=65535)]

# ---------------------------------------------------------------------------------------
# Labels, annotations, environment

#: aci.md's default os/arch whitelist, extended (as the text allows an implementation to)
#: with the Linux architectures of the reference implementation's ``ValidOSArch``.
VALID_OS_ARCH: Mapping[str, frozenset[str]] = {
    "linux": frozenset(
        {
            "amd64",
            "i386",
            "aarch64",
            "aarch64_be",
            "armv6l",
            "armv7l",
            "armv7b",
            "ppc64",
            "ppc64le",
            "s390x",
        }
    ),
    "freebsd": frozenset({"amd64", "i386", "arm"}),
    "darwin": frozenset({"x86_64", "i386"}),
}


class Label(_Model):
    name: ACIdentifier
    value: Str


class _NamedList(RootModel[tuple[Any, ...]]):
    """A list of name/value objects with unique names; a mapping for lookups."""

    model_config = {"frozen": True, "defer_build": True}

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iter(self.root)

    def __len__(self) -> int:
        return len(self.root)

    def __bool__(self) -> bool:
        return bool(self.root)

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value for ``name``, or ``default``."""
        for item in self.root:
            if item.name == name:
                return str(item.value)
        return default

    def as_dict(self) -> dict[str, str]:
        return {item.name: item.value for item in self.root}

    @staticmethod
    def _unique(items: tuple[Any, ...], what: str) -> None:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.name in seen:
                raise fail(f"duplicate {what} name {item.name!r}", i, "name")
            seen.add(item.name)


class Labels(_NamedList):
    """Image labels (aci.md): unique AC Identifier names, never "name", known os/arch."""

    root: tuple[Label, ...] = ()

    @field_validator("root")
    @classmethod
    def _check(cls, items: tuple[Label, ...]) -> tuple[Label, ...]:
        cls._unique(items, "label")
        for i, item in enumerate(items):
            if item.name == "name":
                raise fail('a label cannot be called "name" (it is the image name)', i, "name")
        labels = {item.name: i for i, item in enumerate(items)}
        if "os" in labels:
            os_value = items[labels["os"]].value
            if os_value not in VALID_OS_ARCH:
                known = ", ".join(sorted(VALID_OS_ARCH))
                raise fail(
                    f"os {os_value!r} is not supported (one of: {known})", labels["os"], "value"
                )
            # aci.md: "arch is meaningful only if os is provided", so it is checked
            # against the table only then.
            if "arch" in labels:
                arch = items[labels["arch"]].value
                if arch not in VALID_OS_ARCH[os_value]:
                    known = ", ".join(sorted(VALID_OS_ARCH[os_value]))
                    raise fail(
                        f"arch {arch!r} is not supported with os {os_value!r} (one of: {known})",
                        labels["arch"],
                        "value",
                    )
        return items


def _check_known_annotations(items: tuple[Any, ...]) -> None:
    # aci.md "Recognized annotations": created is a timestamp, homepage and documentation
    # are http(s) URLs.
    for i, item in enumerate(items):
        if item.name == "created":
            try:
                parse_date(item.value)
            except ValueError as e:
                raise fail(str(e), i, "value") from None
        elif item.name in ("homepage", "documentation") and not is_http_url(item.value):
            raise fail(f"{item.value!r} is not an http or https URL", i, "value")


class Annotation(_Model):
    name: ACIdentifier
    value: Str


class Annotations(_NamedList):
    """Image manifest annotations: unique AC Identifier names."""

    root: tuple[Annotation, ...] = ()

    @field_validator("root")
    @classmethod
    def _check(cls, items: tuple[Annotation, ...]) -> tuple[Annotation, ...]:
        cls._unique(items, "annotation")
        _check_known_annotations(items)
        return items


class PodAnnotation(_Model):
    # pods.md restricts pod and pod-app annotation names to AC Name formatting (the
    # reference implementation allows AC Identifiers there too).
    name: ACName
    value: Str


class PodAnnotations(_NamedList):
    """Pod manifest annotations (top level and per app): unique AC Name names."""

    root: tuple[PodAnnotation, ...] = ()

    @field_validator("root")
    @classmethod
    def _check(cls, items: tuple[PodAnnotation, ...]) -> tuple[PodAnnotation, ...]:
        cls._unique(items, "annotation")
        _check_known_annotations(items)
        return items


class EnvironmentVariable(_Model):
    name: Str
    value: Str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _ENV_NAME_RE.match(v):
            raise fail(
                f"{v!r} is not a valid environment variable name: use letters, digits, "
                "'_', '.' and '-', not starting with a digit"
            )
        return v


class Environment(_NamedList):
    """An app's environment: unique, valid variable names, in order."""

    root: tuple[EnvironmentVariable, ...] = ()

    @field_validator("root")
    @classmethod
    def _check(cls, items: tuple[EnvironmentVariable, ...]) -> tuple[EnvironmentVariable, ...]:
        cls._unique(items, "environment variable")
        return items


UserMap = dict[Str, Str]

# ---------------------------------------------------------------------------------------
# App (aci.md "app", also pods.md apps[].app)


class EventHandler(_Model):
    name: Literal["pre-start", "post-stop"]
    exec: tuple[Str, ...]


class MountPoint(_Model):
    name: ACName
    path: NonEmptyStr
    read_only: Bool = Field(False, alias="readOnly")


class Port(_Model):
    name: ACName
    protocol: NonEmptyStr
    port: PortNumber
    #: aci.md: "Must be >=1" (the reference implementation also accepts 0).
    count: Annotated[Int, Field(ge=1)] = 1
    socket_activated: Bool = Field(False, alias="socketActivated")

    @model_validator(mode="after")
    def _range(self) -> Port:
        if self.port + self.count - 1 > 65535:
            raise fail(
                f"port range {self.port}-{self.port + self.count - 1} goes beyond 65535", "count"
            )
        return self

    @property
    def last(self) -> int:
        """The last port of the range."""
        return self.port + self.count - 1


class App(_Model):
    """How to run an image (aci.md "app"); also a pod app's override."""

    #: aci.md marks exec optional (e.g. for images that are only dependencies).
    exec: tuple[Str, ...] | None = None
    user: NonEmptyStr
    group: NonEmptyStr
    # The text's field name is supplementaryGIDs; its own example spells it
    # supplementaryGids (the reference implementation matches names case-insensitively).
    supplementary_gids: tuple[UInt, ...] | None = Field(
        None,
        validation_alias=AliasChoices(
            "supplementaryGIDs", "supplementaryGids", "supplementary_gids"
        ),
        serialization_alias="supplementaryGIDs",
    )
    event_handlers: tuple[EventHandler, ...] = Field((), alias="eventHandlers")
    working_directory: AbsPath | None = Field(None, alias="workingDirectory")
    environment: Environment = Environment()
    isolators: tuple[Isolator, ...] = ()
    mount_points: tuple[MountPoint, ...] = Field((), alias="mountPoints")
    ports: tuple[Port, ...] = ()
    user_annotations: UserMap | None = Field(None, alias="userAnnotations")
    user_labels: UserMap | None = Field(None, alias="userLabels")

    @field_validator("event_handlers")
    @classmethod
    def _one_handler_per_name(cls, v: tuple[EventHandler, ...]) -> tuple[EventHandler, ...]:
        seen: set[str] = set()
        for i, h in enumerate(v):
            if h.name in seen:
                raise fail(f"only one {h.name} event handler is allowed", i, "name")
            seen.add(h.name)
        return v

    @field_validator("isolators")
    @classmethod
    def _isolator_rules(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        check_isolator_set(v, APP)
        return v

    def event_handler(self, name: str) -> EventHandler | None:
        """The ``pre-start`` or ``post-stop`` handler, if any."""
        return next((h for h in self.event_handlers if h.name == name), None)


# ---------------------------------------------------------------------------------------
# Image manifest (aci.md)


class Dependency(_Model):
    image_name: ACIdentifier = Field(alias="imageName")
    image_id: ImageID | None = Field(None, alias="imageID")
    labels: Labels = Labels()
    size: UInt | None = None


class ImageManifest(_Model):
    """An image manifest (aci.md "Image Manifest Schema")."""

    ac_kind: Literal["ImageManifest"] = Field("ImageManifest", alias="acKind")
    ac_version: ACVersion = Field(alias="acVersion")
    name: ACIdentifier
    labels: Labels = Labels()
    app: App | None = None
    dependencies: tuple[Dependency, ...] = ()
    path_whitelist: tuple[AbsPath, ...] = Field((), alias="pathWhitelist")
    annotations: Annotations = Annotations()

    @property
    def version(self) -> str | None:
        """The ``version`` label."""
        return self.labels.get("version")

    @property
    def os(self) -> str | None:
        return self.labels.get("os")

    @property
    def arch(self) -> str | None:
        return self.labels.get("arch")


# ---------------------------------------------------------------------------------------
# Pod manifest (pods.md)


class Volume(_Model):
    name: ACName
    kind: Literal["host", "empty"]
    source: Str | None = None
    read_only: Bool | None = Field(None, alias="readOnly")
    #: None means "not given": pods.md says the executor SHOULD default to recursive.
    recursive: Bool | None = None
    mode: Str | None = None
    uid: UInt | None = None
    gid: UInt | None = None

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-7]{3,4}", v):
            raise fail(f'{v!r} is not an octal permission mode such as "0755"')
        return v

    @model_validator(mode="after")
    def _host_source(self) -> Volume:
        if self.kind == "host":
            if not self.source:
                raise fail('a "host" volume needs a source path', "source")
            if not self.source.startswith("/"):
                raise fail(f"{self.source!r} is not an absolute path", "source")
        return self


class Mount(_Model):
    volume: ACName
    path: NonEmptyStr
    app_volume: Volume | None = Field(None, alias="appVolume")


class RuntimeImage(_Model):
    #: Required in a runnable (reified) manifest; may be absent in a template.
    id: ImageID | None = None
    name: ACIdentifier | None = None
    labels: Labels = Labels()


class RuntimeApp(_Model):
    name: ACName
    image: RuntimeImage
    app: App | None = None
    read_only_root_fs: Bool = Field(False, alias="readOnlyRootFS")
    mounts: tuple[Mount, ...] = ()
    annotations: PodAnnotations = PodAnnotations()


class ExposedPort(_Model):
    name: ACName
    host_port: PortNumber = Field(alias="hostPort")
    host_ip: Str | None = Field(None, alias="hostIP")
    pod_port: Port | None = Field(None, alias="podPort")

    @field_validator("host_ip")
    @classmethod
    def _ipv4(cls, v: str | None) -> str | None:
        # pods.md: "an IPv4 address ... Must be in dotted-quad notation".
        if v is not None:
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise fail(f"{v!r} is not an IPv4 address in dotted-quad notation") from None
        return v


class PodManifest(_Model):
    """A pod manifest (pods.md "Pod Manifest Schema")."""

    ac_kind: Literal["PodManifest"] = Field("PodManifest", alias="acKind")
    ac_version: ACVersion = Field(alias="acVersion")
    #: pods.md: required; an empty list is not forbidden by the text.
    apps: tuple[RuntimeApp, ...]
    volumes: tuple[Volume, ...] = ()
    isolators: tuple[Isolator, ...] = ()
    annotations: PodAnnotations = PodAnnotations()
    ports: tuple[ExposedPort, ...] = ()
    user_annotations: UserMap | None = Field(None, alias="userAnnotations")
    user_labels: UserMap | None = Field(None, alias="userLabels")

    @field_validator("isolators")
    @classmethod
    def _isolator_rules(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        check_isolator_set(v, POD)
        return v

    @field_validator("apps", "volumes", "ports")
    @classmethod
    def _unique_names(cls, v: tuple[Any, ...], info: ValidationInfo) -> tuple[Any, ...]:
        # apps: "MUST be unique"; volumes are "used as an index"; port names "MUST be
        # unique among apps within a pod".
        seen: set[str] = set()
        for i, item in enumerate(v):
            if item.name in seen:
                raise fail(f"duplicate name {item.name!r}", i, "name")
            seen.add(item.name)
        return v

    @model_validator(mode="after")
    def _reified(self, info: ValidationInfo) -> PodManifest:
        # pods.md: templates may leave image IDs and volumes to be bound later; a manifest
        # to run "must reference all applications deterministically (by image ID)" and
        # have its mounts satisfied by volumes.
        if (info.context or {}).get("template"):
            return self
        volumes = {v.name for v in self.volumes}
        for i, app in enumerate(self.apps):
            if app.image.id is None:
                raise fail(
                    "is required (a pod manifest to run must name images by ID)",
                    "apps",
                    i,
                    "image",
                    "id",
                )
            for j, mount in enumerate(app.mounts):
                if mount.app_volume is None and mount.volume not in volumes:
                    raise fail(
                        f"no volume named {mount.volume!r} in volumes",
                        "apps",
                        i,
                        "mounts",
                        j,
                        "volume",
                    )
        return self

    def app(self, name: str) -> RuntimeApp | None:
        """The app called ``name``, if any."""
        return next((a for a in self.apps if a.name == name), None)

    def volume(self, name: str) -> Volume | None:
        return next((v for v in self.volumes if v.name == name), None)


# ---------------------------------------------------------------------------------------
# Parsing and writing


def _format_path(loc: list[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _to_invalid(err: ValidationError, what: str) -> InvalidError:
    e = err.errors(include_url=False)[0]
    loc: list[str | int] = [
        p for p in e["loc"] if not (isinstance(p, str) and (p in ISOLATOR_TAGS or p == "root"))
    ]
    ctx = e.get("ctx") or {}
    loc += ctx.get("sub", [])
    if e["type"] == "missing":
        msg = "is required"
    elif e["type"] == "appc":
        msg = str(ctx.get("reason", e["msg"]))
    else:
        msg = e["msg"][:1].lower() + e["msg"][1:]
        if "input" in e and e["type"] not in ("model_type", "dict_type", "tuple_type"):
            msg += f", got {json.dumps(e['input'])[:60]}"
    path = _format_path(loc)
    return InvalidError(f"{path}: {msg}" if path else f"{what}: {msg}")


#: The deepest JSON a manifest may nest (objects and arrays); real ones nest about 6.
MAX_JSON_DEPTH = 64


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys: JSON parsers disagree on which one wins (Python's the last, some
    # the first), so two readers of one manifest could see two different ones.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(obj: Any) -> int:
    """How deep ``obj`` nests, walked without recursion (it is untrusted)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, d)
        if d > MAX_JSON_DEPTH:
            break
        stack.extend((v, d + 1) for v in node if isinstance(v, dict | list))
    return deepest


def load_json(data: bytes | str, what: str) -> Any:
    """Parse untrusted JSON strictly: no duplicate keys, no NaN or Infinity, nesting at
    most MAX_JSON_DEPTH deep; anything else is an InvalidError naming ``what``."""
    try:
        obj = json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _DuplicateKey as e:
        raise InvalidError(
            f"{what} is not valid: key {str(e)[:60]!r} appears twice in one object",
            hint="JSON readers disagree on which duplicate wins; keep one",
        ) from None
    except RecursionError:
        # json's scanner recurses per level and gives up at the recursion limit.
        raise InvalidError(
            f"{what} is not valid: it nests deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError, huge integers, NaN
        raise InvalidError(f"{what} is not valid JSON: {str(e)[:200]}") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise InvalidError(f"{what} is not valid: it nests deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _load(data: bytes | str | Mapping[str, Any], what: str) -> dict[str, Any]:
    obj = load_json(data, what) if isinstance(data, bytes | str) else dict(data)
    if not isinstance(obj, dict):
        raise InvalidError(f"{what} must be a JSON object")
    return obj


def parse_image_manifest(data: bytes | str | Mapping[str, Any]) -> ImageManifest:
    """Parse and validate an image manifest; raise InvalidError naming the bad field."""
    obj = _load(data, "image manifest")
    try:
        return ImageManifest.model_validate(obj)
    except ValidationError as e:
        raise _to_invalid(e, "image manifest") from None


def parse_pod_manifest(
    data: bytes | str | Mapping[str, Any], *, template: bool = False
) -> PodManifest:
    """Parse and validate a pod manifest; raise InvalidError naming the bad field.

    With ``template=True`` the manifest may be a deployable template (pods.md): apps may
    lack image IDs and mounts may name volumes that the executor binds later.
    """
    obj = _load(data, "pod manifest")
    try:
        return PodManifest.model_validate(obj, context={"template": template})
    except ValidationError as e:
        raise _to_invalid(e, "pod manifest") from None


def parse_manifest(data: bytes | str | Mapping[str, Any]) -> ImageManifest | PodManifest:
    """Parse either kind of manifest, choosing by its ``acKind``."""
    obj = _load(data, "manifest")
    kind = obj.get("acKind")
    if kind == "ImageManifest":
        return parse_image_manifest(obj)
    if kind == "PodManifest":
        return parse_pod_manifest(obj)
    raise InvalidError(f'acKind: expected "ImageManifest" or "PodManifest", got {kind!r}')


# Optional list fields whose absence and emptiness mean the same; omitted when empty.
_OMIT_IF_EMPTY = frozenset(
    {
        "labels",
        "eventHandlers",
        "environment",
        "isolators",
        "mountPoints",
        "ports",
        "dependencies",
        "pathWhitelist",
        "annotations",
        "volumes",
        "mounts",
    }
)


def _prune(value: Any, key: str = "") -> Any:
    if key == "value":  # isolator values and label values are kept as they are
        return value
    if isinstance(value, dict):
        return {k: _prune(v, k) for k, v in value.items() if not (k in _OMIT_IF_EMPTY and v == [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def manifest_dict(manifest: ImageManifest | PodManifest) -> dict[str, Any]:
    """The manifest as JSON-able data with the spec's field names; empty lists omitted."""
    data = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
    result: dict[str, Any] = _prune(data)
    return result


def dump_manifest(manifest: ImageManifest | PodManifest, *, indent: int | None = 2) -> str:
    """Canonical JSON text of a manifest, which the parser reads back to an equal model."""
    return json.dumps(manifest_dict(manifest), indent=indent, ensure_ascii=False) + "\n"
