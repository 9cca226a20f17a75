"""Pure encoding of transient-unit properties (no bus)."""

from __future__ import annotations

import subprocess

import pytest

from podmgr import systemd
from podmgr.errors import SystemdError


def test_signatures_for_the_properties_podmgr_relies_on() -> None:
    sig = systemd.PROPERTY_SIGNATURES
    assert sig["ExecStart"] == "a(sasb)"
    assert sig["BindPaths"] == "a(ssbt)"
    assert sig["BindReadOnlyPaths"] == "a(ssbt)"
    assert sig["Environment"] == "as"
    assert sig["MemoryMax"] == "t"
    assert sig["CPUQuotaPerSecUSec"] == "t"
    assert sig["LogExtraFields"] == "aay"
    assert sig["SystemCallFilter"] == "(bas)"
    assert sig["OOMScoreAdjust"] == "i"
    assert sig["StandardInputFileDescriptor"] == "h"


def test_encode_mapping_is_typed() -> None:
    props = {
        "Description": "x",
        "ExecStart": [("/bin/true", ["/bin/true"], False)],
        "LogExtraFields": ["PODMGR_POD=abc"],
        "MemoryMax": 20 << 20,
    }
    enc = systemd.encode_properties(props)
    assert enc == [
        ("Description", ("s", "x")),
        ("ExecStart", ("a(sasb)", [("/bin/true", ["/bin/true"], False)])),
        ("LogExtraFields", ("aay", [b"PODMGR_POD=abc"])),
        ("MemoryMax", ("t", 20 << 20)),
    ]


def test_unknown_property_needs_an_explicit_variant() -> None:
    with pytest.raises(SystemdError, match="unknown unit property 'Frobnicate'"):
        systemd.encode_property("Frobnicate", 1)
    assert systemd.encode_property("Frobnicate", systemd.Variant("u", 1)) == (
        "Frobnicate",
        ("u", 1),
    )


@pytest.mark.parametrize(
    "unit",
    ["podmgr.slice", "run-u2.service", "podmgr-1f2e-app@x.service", "a:b\\c.mount", "é.service"],
)
def test_unit_path_matches_systemd_escaping(unit: str) -> None:
    # `busctl` spells unit object paths with the same escaping; the label rule is
    # simple enough to restate: alnum stays, every other byte becomes _xx.
    path = systemd.unit_path(unit)
    label = path.rsplit("/", 1)[1]
    decoded = bytearray()
    i = 0
    while i < len(label):
        if label[i] == "_":
            decoded.append(int(label[i + 1 : i + 3], 16))
            i += 3
        else:
            decoded.append(ord(label[i]))
            i += 1
    assert decoded.decode() == unit
    assert all(c.isalnum() or c == "_" for c in label)


def test_bus_errors_keep_their_name() -> None:
    e = systemd._bus_error("org.freedesktop.systemd1.NoSuchUnit", "Unit x not loaded.", "GetUnit")
    assert isinstance(e, systemd.NoSuchUnitError)
    assert e.name == "org.freedesktop.systemd1.NoSuchUnit"
    assert "org.freedesktop.systemd1.NoSuchUnit" in str(e)
    other = systemd._bus_error("org.example.Weird", "odd", "X")
    assert type(other) is systemd.BusError and other.name == "org.example.Weird"


def test_cli_version_without_systemd_says_so(tmp_path: object) -> None:
    p = subprocess.run(
        ["python3", "-m", "podmgr", "--bus", "unix:path=/nonexistent/bus", "version"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0
    assert "appc spec 0.8.11" in p.stdout
    assert "systemd not reachable" in p.stdout


def _sample(sig: str, n: int = 0) -> object:
    """A value of D-Bus type ``sig`` as podmgr builds them (tuples for structs)."""
    if sig == "ay":
        return b"K=v\xff"
    if sig.startswith("a"):
        return [_sample(sig[1:], n + i) for i in range(2)]
    if sig.startswith("("):
        return tuple(_sample(f, n) for f in systemd._split_signature(sig[1:-1]))
    return {"s": f"s{n}", "b": n % 2 == 0, "t": 2**64 - 1 - n, "u": n, "i": -n, "h": n}[sig]


@pytest.mark.parametrize("name", sorted(systemd.PROPERTY_SIGNATURES))
def test_properties_survive_a_json_round_trip(name: str) -> None:
    # plan.json stores the start batch as JSON; from_plain must give back what jeepney
    # takes, for every property podmgr knows.
    import json

    sig = systemd.PROPERTY_SIGNATURES[name]
    value = _sample(sig)
    plain = json.loads(json.dumps({name: value}, default=systemd.to_plain))[name]
    back = systemd.from_plain({name: plain})
    assert back == {name: value}
    systemd.encode_properties(back)


def test_split_signature() -> None:
    assert systemd._split_signature("sasb") == ["s", "as", "b"]
    assert systemd._split_signature("ssba(ss)") == ["s", "s", "b", "a(ss)"]
    assert systemd._split_signature("a{sv}(ii)t") == ["a{sv}", "(ii)", "t"]
