"""appc isolators (ace.md "Isolators") and resource quantities, as pydantic models.

Also home of the small pieces the manifest models in :mod:`podmgr.schema` build on
(``_Model``, ``fail``), so that the two modules do not import each other in a circle.

Each isolator the spec text defines has its own model with a typed ``value``; any other
name is kept as an :class:`UnknownIsolator` with its raw JSON value, because ace.md lets an
executor ignore isolators it does not understand but requires it to tell the user which
ones it ignored — so the executor, not the parser, has to see them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Context, Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Strict,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "AC_IDENTIFIER_RE",
    "APP",
    "ISOLATOR_TAGS",
    "POD",
    "BlockBandwidthIsolator",
    "BlockIOPSIsolator",
    "Bool",
    "CPUIsolator",
    "CPUSharesIsolator",
    "CapabilitiesRemoveSetIsolator",
    "CapabilitiesRetainSetIsolator",
    "Int",
    "Isolator",
    "MemoryIsolator",
    "NetworkBandwidthIsolator",
    "NoNewPrivilegesIsolator",
    "OOMScoreAdjIsolator",
    "Quantity",
    "SELinuxContextIsolator",
    "SeccompRemoveSetIsolator",
    "SeccompRetainSetIsolator",
    "Str",
    "SysctlIsolator",
    "UnknownIsolator",
    "check_applicable",
    "check_isolator_set",
    "fail",
    "parse_quantity",
    "quantity_bytes",
    "quantity_millicores",
]


class _Model(BaseModel):
    # Unknown fields are ignored, not rejected: types.md promises forward and backward
    # compatibility within a major version, so a 0.8.11 reader must accept a manifest
    # written against a later 0.x that adds fields (the reference implementation drops
    # them too). The raw manifest bytes are what the metadata service serves, so nothing
    # is lost by not keeping them here. Strict: JSON types are not coerced ("1" is no int).
    # Primitive fields use the strict aliases below so that JSON types are not coerced
    # ("1" is no int, 1 is no bool); containers stay lax so that Python callers may pass
    # lists where the models keep tuples.
    # defer_build: a model's validator is built on first use, not at import; most
    # commands use a few of these models, and building all of them cost 50-80 ms of
    # start-up with Debian 13's pydantic 2.10 (bench/pod_start).
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, defer_build=True)


Str = Annotated[str, Strict()]
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]


def fail(reason: str, *sub: str | int) -> PydanticCustomError:
    """An error for a validator to raise; ``sub`` extends the field path (e.g. an index).

    The reason travels in the context rather than the template so that braces in user
    input cannot break pydantic's message formatting.
    """
    return PydanticCustomError("appc", "{reason}", {"reason": reason, "sub": list(sub)})


AC_IDENTIFIER_RE = re.compile(r"^[a-z0-9]+([-._~/][a-z0-9]+)*\Z")

# ---------------------------------------------------------------------------------------
# Quantities (ace.md "Resource Isolators")

# Quantities are Kubernetes resource quantities, as in the reference implementation (which
# parses them with Kubernetes' own code) and as podmgr's users write them for Kubernetes:
# unsuffixed, decimal SI suffixes k M G T P E, binary suffixes Ki Mi Gi Ti Pi Ei, and
# milli-units ("300m"). ace.md's prose lists an upper-case "K" among the metric suffixes,
# but no Kubernetes parser accepts "1K" and it is ambiguous between 1000 and 1024, so it
# is refused with a hint naming both spellings. Exponent forms ("1e3") and signs are
# refused too: they are not in ace.md's list.
# ASCII digits only ("\d" would take any script's), and \Z, not $, which allows a
# trailing newline.
_QUANTITY_RE = re.compile(r"(\d+(?:\.\d+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?\Z", re.ASCII)
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(["k", "M", "G", "T", "P", "E"])},
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])},
}
_QUANTITY_HINT = (
    "use a number with an optional suffix: m (milli), k, M, G, T, P, E, "
    "or a binary suffix such as Ki, Mi, Gi"
)
#: No quantity needs more characters; a longer one is refused before Decimal sees it.
MAX_QUANTITY_LEN = 64
#: systemd takes limits as 64-bit numbers (and UINT64_MAX means "infinity"); anything
#: from 2**63 on overflows them, or what podmgr multiplies them by, so it is refused
#: here rather than as an overflow in the D-Bus encoder.
MAX_QUANTITY = 2**63 - 1
# Exact arithmetic: the default context's 28 digits would round "1.0000…01Ki" to whole.
_EXACT = Context(prec=2 * MAX_QUANTITY_LEN + 10)


def parse_quantity(text: str) -> Decimal:
    """The exact value of a quantity string ("1.5Gi", "250m", "1k"). Raises ValueError."""
    if len(text) > MAX_QUANTITY_LEN:
        raise ValueError(f"quantity {text[:MAX_QUANTITY_LEN]!r}… is too long")
    m = _QUANTITY_RE.match(text)
    if not m and re.fullmatch(r"\d+(?:\.\d+)?K", text, re.ASCII):
        raise ValueError(
            f"quantity {text!r} is not valid: write {text[:-1]}k for 1000s "
            f"or {text[:-1]}Ki for 1024s"
        )
    if not m:
        raise ValueError(f"quantity {text!r} is not valid: {_QUANTITY_HINT}")
    try:
        return _EXACT.multiply(Decimal(m.group(1)), _SUFFIX[m.group(2) or ""])
    except InvalidOperation as e:  # pragma: no cover - the regex admits only plain decimals
        raise ValueError(f"quantity {text!r} is not valid") from e


def _whole(text: str, scale: int, unit: str, limit: int = MAX_QUANTITY) -> int:
    value = _EXACT.multiply(parse_quantity(text), Decimal(scale))
    if value != value.to_integral_value():
        # ace.md: quantities "must always be represented internally ... as an integer
        # value ... in a resource type's natural base units"; rounding would change what
        # the author asked for, so say so instead.
        raise ValueError(f"quantity {text!r} is not a whole number of {unit}")
    if value > limit:
        raise ValueError(f"quantity {text!r} is too large (at most {limit} {unit})")
    return int(value)


def quantity_bytes(text: str) -> int:
    """A byte (or count) quantity as an integer: "1Ki" -> 1024, "1k" -> 1000."""
    return _whole(text, 1, "bytes")


def quantity_millicores(text: str) -> int:
    """A CPU quantity in millicores: "500m" -> 500, "2" -> 2000, "0.25" -> 250."""
    # systemd's CPU quota is in µs per second: 1000 of them per millicore.
    return _whole(text, 1000, "millicores", MAX_QUANTITY // 1000)


def _quantity_input(value: Any) -> Any:
    # A JSON number is an unsuffixed quantity; keep it as text so that the canonical form
    # is the one the spec's examples use (strings). bool is an int subclass: refuse it.
    if isinstance(value, bool):
        raise fail('quantity must be a string such as "500m" or "1Gi"')
    if isinstance(value, int | float):
        value = format(Decimal(str(value)), "f")
    if not isinstance(value, str):
        raise fail('quantity must be a string such as "500m" or "1Gi"')
    try:
        parse_quantity(value)
    except ValueError as e:
        raise fail(str(e)) from None
    return value


#: A resource quantity, kept as the string the author wrote (numbers become strings).
Quantity = Annotated[str, BeforeValidator(_quantity_input)]


def _check_whole(text: str | None, unit: str) -> None:
    if text is None:
        return
    try:
        if unit == "millicores":
            quantity_millicores(text)
        else:
            quantity_bytes(text)
    except ValueError as e:
        raise fail(str(e)) from None


class _RequestLimit(_Model):
    #: ace.md: "If request is omitted, it defaults to the value of limit" — only request
    #: is described as optional, so limit is required.
    request: Quantity | None = None
    limit: Quantity

    _unit: ClassVar[str] = "bytes"

    @field_validator("request", "limit")
    @classmethod
    def _integral(cls, v: str | None) -> str | None:
        _check_whole(v, cls._unit)
        return v

    @model_validator(mode="after")
    def _request_within_limit(self) -> _RequestLimit:
        # request is "the minimum amount guaranteed", limit "the maximum amount".
        if self.request is not None and parse_quantity(self.request) > parse_quantity(self.limit):
            raise fail(f"request {self.request!r} is larger than limit {self.limit!r}", "request")
        return self


class CPUValue(_RequestLimit):
    _unit: ClassVar[str] = "millicores"

    @property
    def limit_millicores(self) -> int:
        return quantity_millicores(self.limit)

    @property
    def request_millicores(self) -> int:
        return quantity_millicores(self.request if self.request is not None else self.limit)


class MemoryValue(_RequestLimit):
    @property
    def limit_bytes(self) -> int:
        return quantity_bytes(self.limit)

    @property
    def request_bytes(self) -> int:
        return quantity_bytes(self.request if self.request is not None else self.limit)


class DefaultLimitValue(_Model):
    """block-bandwidth, block-iops, network-bandwidth: ``default`` must be true."""

    default: Bool
    limit: Quantity

    @field_validator("default")
    @classmethod
    def _must_be_true(cls, v: bool) -> bool:
        if v is not True:
            raise fail("must be set to true (ace.md: the limit applies to all devices)")
        return v

    @field_validator("limit")
    @classmethod
    def _integral(cls, v: str) -> str:
        _check_whole(v, "units")
        return v

    @property
    def limit_value(self) -> int:
        """The limit in base units (bytes per second, or operations per second)."""
        return quantity_bytes(self.limit)


_CAP_RE = re.compile(r"^CAP_[A-Z0-9_]+\Z")
_ERRNO_RE = re.compile(r"^E[A-Z0-9]+\Z")


class CapabilitySetValue(_Model):
    # Unlike the seccomp sets, the text does not require a non-empty capability set, and
    # an empty retain-set ("all others will be removed") is meaningful: no capabilities.
    set: tuple[Str, ...]

    @field_validator("set")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, cap in enumerate(v):
            if not _CAP_RE.match(cap):
                raise fail(f"{cap!r} is not a capability name such as CAP_NET_ADMIN", i)
        return v


class SeccompSetValue(_Model):
    set: tuple[Str, ...]
    #: "If missing or empty string, ... blocked syscalls MUST result in ... SIGSYS".
    errno: Str | None = None

    @field_validator("set")
    @classmethod
    def _syscalls(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise fail('must not be empty (ace.md: "This field MUST NOT be empty")')
        for i, name in enumerate(v):
            if not name or any(c.isspace() for c in name):
                raise fail(f"{name!r} is not a syscall name", i)
            if name.startswith("@") and "/" not in name:
                raise fail(f"{name!r}: special values are scoped, e.g. @appc.io/all", i)
        return v

    @field_validator("errno")
    @classmethod
    def _errno(cls, v: str | None) -> str | None:
        if v and not _ERRNO_RE.match(v):
            raise fail(f"{v!r} is not an all-uppercase errno name such as ENOTSUP")
        return v


class SELinuxContextValue(_Model):
    user: Str
    role: Str
    type: Str
    level: Str

    @field_validator("user", "role", "type", "level")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v:
            raise fail("must not be empty")
        return v

    def __str__(self) -> str:
        return f"{self.user}:{self.role}:{self.type}:{self.level}"


# ---------------------------------------------------------------------------------------
# Isolator models. ``scopes`` is the "Scope:" line of each isolator in ace.md.

APP = "app"
POD = "pod"


class _IsolatorBase(_Model):
    scopes: ClassVar[frozenset[str]] = frozenset({APP, POD})
    #: True for isolators ace.md defines; False for names kept raw.
    known: ClassVar[bool] = True


class CPUIsolator(_IsolatorBase):
    name: Literal["resource/cpu"]
    value: CPUValue


class MemoryIsolator(_IsolatorBase):
    name: Literal["resource/memory"]
    value: MemoryValue


class BlockBandwidthIsolator(_IsolatorBase):
    name: Literal["resource/block-bandwidth"]
    value: DefaultLimitValue


class BlockIOPSIsolator(_IsolatorBase):
    name: Literal["resource/block-iops"]
    value: DefaultLimitValue


class NetworkBandwidthIsolator(_IsolatorBase):
    name: Literal["resource/network-bandwidth"]
    value: DefaultLimitValue


class CapabilitiesRetainSetIsolator(_IsolatorBase):
    scopes: ClassVar[frozenset[str]] = frozenset({APP})
    name: Literal["os/linux/capabilities-retain-set"]
    value: CapabilitySetValue


class CapabilitiesRemoveSetIsolator(_IsolatorBase):
    scopes: ClassVar[frozenset[str]] = frozenset({APP})
    name: Literal["os/linux/capabilities-remove-set"]
    value: CapabilitySetValue


class SeccompRetainSetIsolator(_IsolatorBase):
    scopes: ClassVar[frozenset[str]] = frozenset({APP})
    name: Literal["os/linux/seccomp-retain-set"]
    value: SeccompSetValue


class SeccompRemoveSetIsolator(_IsolatorBase):
    scopes: ClassVar[frozenset[str]] = frozenset({APP})
    name: Literal["os/linux/seccomp-remove-set"]
    value: SeccompSetValue


class NoNewPrivilegesIsolator(_IsolatorBase):
    scopes: ClassVar[frozenset[str]] = frozenset({APP})
    name: Literal["os/linux/no-new-privileges"]
    value: Bool


class SELinuxContextIsolator(_IsolatorBase):
    name: Literal["os/linux/selinux-context"]
    value: SELinuxContextValue


class SysctlIsolator(_IsolatorBase):
    scopes: ClassVar[frozenset[str]] = frozenset({POD})
    name: Literal["os/unix/sysctl"]
    value: dict[Str, Str]

    @field_validator("value")
    @classmethod
    def _keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not key or any(c.isspace() for c in key):
                raise fail(f"{key!r} is not a sysctl parameter name", key)
        return v


# The two below are not in the 0.8.11 text but the reference implementation defines and
# range-checks them; validate them the same way so that podmgr never runs a value that
# actool calls invalid. Their scope is not written down, so both scopes are allowed.


class OOMScoreAdjIsolator(_IsolatorBase):
    name: Literal["os/linux/oom-score-adj"]
    value: Annotated[int, Strict(), Field(ge=-1000, le=1000)]


class CPUSharesIsolator(_IsolatorBase):
    name: Literal["os/linux/cpu-shares"]
    value: Annotated[int, Strict(), Field(ge=2, le=262144)]


class UnknownIsolator(_IsolatorBase):
    """An isolator this parser does not know; ``value`` is the raw JSON value."""

    known: ClassVar[bool] = False
    name: Str
    value: JsonValue

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        # types.md: an isolator's "name" must be an AC Identifier, known or not.
        if not AC_IDENTIFIER_RE.match(v):
            raise fail(f"{v!r} is not a valid AC Identifier")
        return v


# AppArmor is neither in the text nor in the reference implementation, so a name such as
# "os/linux/apparmor" parses as an UnknownIsolator like any other.
_KNOWN: dict[str, type[_IsolatorBase]] = {
    cls.model_fields["name"].annotation.__args__[0]: cls  # type: ignore[union-attr]
    for cls in (
        CPUIsolator,
        MemoryIsolator,
        BlockBandwidthIsolator,
        BlockIOPSIsolator,
        NetworkBandwidthIsolator,
        CapabilitiesRetainSetIsolator,
        CapabilitiesRemoveSetIsolator,
        SeccompRetainSetIsolator,
        SeccompRemoveSetIsolator,
        NoNewPrivilegesIsolator,
        SELinuxContextIsolator,
        SysctlIsolator,
        OOMScoreAdjIsolator,
        CPUSharesIsolator,
    )
}
_UNKNOWN_TAG = "<unknown>"
#: Discriminator tags; they appear in pydantic's error locations and are dropped there.
ISOLATOR_TAGS = frozenset({*_KNOWN, _UNKNOWN_TAG})


def _isolator_tag(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    if not isinstance(name, str):
        return None
    return name if name in _KNOWN else _UNKNOWN_TAG


Isolator = Annotated[
    Annotated[CPUIsolator, Tag("resource/cpu")]
    | Annotated[MemoryIsolator, Tag("resource/memory")]
    | Annotated[BlockBandwidthIsolator, Tag("resource/block-bandwidth")]
    | Annotated[BlockIOPSIsolator, Tag("resource/block-iops")]
    | Annotated[NetworkBandwidthIsolator, Tag("resource/network-bandwidth")]
    | Annotated[CapabilitiesRetainSetIsolator, Tag("os/linux/capabilities-retain-set")]
    | Annotated[CapabilitiesRemoveSetIsolator, Tag("os/linux/capabilities-remove-set")]
    | Annotated[SeccompRetainSetIsolator, Tag("os/linux/seccomp-retain-set")]
    | Annotated[SeccompRemoveSetIsolator, Tag("os/linux/seccomp-remove-set")]
    | Annotated[NoNewPrivilegesIsolator, Tag("os/linux/no-new-privileges")]
    | Annotated[SELinuxContextIsolator, Tag("os/linux/selinux-context")]
    | Annotated[SysctlIsolator, Tag("os/unix/sysctl")]
    | Annotated[OOMScoreAdjIsolator, Tag("os/linux/oom-score-adj")]
    | Annotated[CPUSharesIsolator, Tag("os/linux/cpu-shares")]
    | Annotated[UnknownIsolator, Tag(_UNKNOWN_TAG)],
    Discriminator(
        _isolator_tag,
        custom_error_type="appc",
        custom_error_message='an isolator must be an object with a string "name"',
    ),
]

# ace.md: "Only a single X isolator can be specified per-app/per-pod".
_SINGLE = frozenset(
    {
        "os/linux/seccomp-remove-set",
        "os/linux/seccomp-retain-set",
        "os/linux/selinux-context",
        "os/unix/sysctl",
    }
)
# Pairs the text says cannot be used in conjunction.
_EXCLUSIVE = (
    ("os/linux/seccomp-retain-set", "os/linux/seccomp-remove-set"),
    ("os/linux/capabilities-retain-set", "os/linux/capabilities-remove-set"),
)


def check_isolator_set(isolators: tuple[_IsolatorBase, ...], scope: str) -> None:
    """Raise (as a validator would) if a list breaks ace.md's scope or uniqueness rules."""
    seen: dict[str, int] = {}
    for i, iso in enumerate(isolators):
        name = iso.name  # type: ignore[attr-defined]
        if scope not in iso.scopes:
            where = "pods" if scope == APP else "apps"
            raise fail(f"{name} applies to {where} only, not to {scope}s (ace.md: Scope)", i)
        if name in _SINGLE and name in seen:
            raise fail(f"only a single {name} isolator may be given per {scope}", i)
        for a, b in _EXCLUSIVE:
            other = b if name == a else a if name == b else None
            if other is not None and other in seen:
                raise fail(f"{name} cannot be used together with {other}", i)
        seen.setdefault(name, i)


#: The seccomp sets' special values ace.md defines; podmgr knows no others.
SECCOMP_SPECIAL = ("@appc.io/all", "@appc.io/empty")


def check_applicable(isolators: Sequence[Any], where: str) -> None:
    """Raise InvalidError for a valid isolator that this executor cannot apply as asked.

    Valid appc, and a manifest with it still imports; but systemd would take it and do
    something else than its author meant: a memory or CPU limit of 0 (systemd reads
    MemoryMax=0 as "none at all", a quota of 0 as 1 %), a capability or system call
    name it does not know (it drops such names silently: a retain set with a misspelt
    name gave an empty bounding set), an errno it has no number for, a special value
    other than ace.md's. ``where`` names the pod or app in the message.
    """
    import errno

    from podmgr.errors import InvalidError
    from podmgr.syscalls import SYSCALLS
    from podmgr.units import CAP_NUMBERS

    for iso in isolators:
        name = iso.name
        value = iso.value
        if isinstance(iso, MemoryIsolator | CPUIsolator) and parse_quantity(value.limit) == 0:
            raise InvalidError(
                f"{where}: {name} limit {value.limit!r} is zero",
                hint="give a limit above 0, or no limit at all",
            )
        if isinstance(iso, CapabilitiesRetainSetIsolator | CapabilitiesRemoveSetIsolator):
            unknown = [c for c in value.set if c.removeprefix("CAP_") not in CAP_NUMBERS]
            if unknown:
                raise InvalidError(
                    f"{where}: {name}: unknown capability {unknown[0]!r}",
                    hint="see capabilities(7) for the names, such as CAP_NET_BIND_SERVICE",
                )
        if isinstance(iso, SeccompRetainSetIsolator | SeccompRemoveSetIsolator):
            for call in value.set:
                if call.startswith("@") and call not in SECCOMP_SPECIAL:
                    raise InvalidError(
                        f"{where}: {name}: unknown special value {call!r}",
                        hint=f"podmgr knows {' and '.join(SECCOMP_SPECIAL)}",
                    )
                if not call.startswith("@") and call not in SYSCALLS:
                    raise InvalidError(
                        f"{where}: {name}: unknown system call {call!r}",
                        hint="see syscalls(2) for the names; a call newer than podmgr's "
                        "table (podmgr/syscalls.py) must be added there",
                    )
            if value.errno and not isinstance(getattr(errno, value.errno, None), int):
                raise InvalidError(
                    f"{where}: {name}: unknown errno {value.errno!r}",
                    hint="see errno(3) for the names, such as EPERM or ENOSYS",
                )
