"""Property-based tests of the parsers hostile pod options go through (issue 18):
quantities, names (AC names, labels, network names, UUID prefixes, IDs, paths),
environment files and isolator sets. Whatever the input, the outcome is a value or
podmgr's own error, never another exception."""

from __future__ import annotations

import contextlib
import os
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podmgr import isolators as iso
from podmgr import names, netspec, pod, podlist, schema
from podmgr.cli import pod as cli_pod
from podmgr.errors import InvalidError, PodmgrError

pytestmark = pytest.mark.unit

FEW = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_SUFFIXES = ["", "m", "k", "K", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "e3"]
# Quantity-like text: digits (ASCII and not), a point, a suffix, a stray character.
_QUANTITY = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda a, b, s, tail: f"{a}{b}{s}{tail}",
        st.integers(min_value=0, max_value=10**40).map(str),
        st.one_of(st.just(""), st.integers(min_value=0, max_value=10**30).map(lambda x: f".{x}")),
        st.sampled_from(_SUFFIXES),
        st.sampled_from(["", "", "\n", " ", "\x00", "\u0661", "-"]),
    ),
)


@FEW
@given(_QUANTITY)
def test_quantities_parse_to_a_bounded_whole_number_or_a_value_error(text: str) -> None:
    for conv, limit in (
        (iso.quantity_bytes, iso.MAX_QUANTITY),
        (iso.quantity_millicores, iso.MAX_QUANTITY // 1000),
    ):
        try:
            value = conv(text)
        except ValueError as e:
            assert str(e).startswith("quantity ")
            continue
        assert 0 <= value <= limit
        assert text.isascii() and text == text.strip()


@FEW
@given(st.integers(min_value=0, max_value=2**70), st.sampled_from(_SUFFIXES[:-1]))
def test_a_quantity_is_exact(n: int, suffix: str) -> None:
    """Exact, not rounded at 28 digits: the value is n times the suffix, or refused."""
    text = f"{n}{suffix}"
    try:
        value = iso.quantity_bytes(text)
    except ValueError:
        return
    scale = {"": 1, "k": 1000, "Ki": 1024}.get(suffix)
    if scale is not None:
        assert value == n * scale
    assert Decimal(value) == iso.parse_quantity(text)


def test_quantity_edges() -> None:
    assert iso.quantity_bytes("7Ei") == 7 * 1024**6
    with pytest.raises(ValueError, match="too large"):
        iso.quantity_bytes("8Ei")
    with pytest.raises(ValueError, match="not a whole number"):
        iso.quantity_bytes("1.0000000000000000000000000000001Ki")
    with pytest.raises(ValueError, match="not valid"):
        iso.quantity_bytes("1Gi\n")
    with pytest.raises(ValueError, match="not valid"):
        iso.quantity_bytes("\u0661")  # ARABIC-INDIC DIGIT ONE: \d, but no number of ours
    with pytest.raises(ValueError, match="too long"):
        iso.quantity_bytes("1" * 65)


@FEW
@given(st.text(max_size=40))
def test_ac_names_are_a_bool_or_an_invalid_error(text: str) -> None:
    assert isinstance(schema.is_ac_name(text), bool)
    assert isinstance(schema.is_ac_identifier(text), bool)
    with contextlib.suppress(InvalidError):
        assert schema.validate_ac_name(text) == text


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=40),
        st.builds(
            "".join,
            st.tuples(
                st.from_regex(r"[a-z0-9]+(-[a-z0-9]+)*", fullmatch=True),
                st.sampled_from(["", "\n", " ", "\x00"]),
            ),
        ),
    )
)
def test_an_ac_name_has_no_whitespace_or_control_character(text: str) -> None:
    if schema.is_ac_name(text) or schema.is_ac_identifier(text):
        assert names.bad_char(text, space=True) is None


@FEW
@given(st.text(max_size=40))
def test_bad_char_finds_every_control_character(text: str) -> None:
    c = names.bad_char(text)
    if c is None:
        assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text)
    else:
        assert chr(int(c[2:], 16)) in text


_MAP = st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4)


@FEW
@given(_MAP, _MAP)
def test_labels_and_annotations_are_names_without_whitespace(
    labels: dict[str, str], annotations: dict[str, str]
) -> None:
    manifest = SimpleNamespace(user_labels=labels, user_annotations=annotations)
    try:
        pod._check_user_maps(manifest)
    except InvalidError as e:
        assert "\n" not in e.message or any("\n" in k for k in (*labels, *annotations))
        return
    for k, v in (*labels.items(), *annotations.items()):
        assert k and names.bad_char(k, space=True) is None and names.bad_char(v) is None


@FEW
@given(st.lists(st.text(max_size=30), max_size=4))
def test_net_options_parse_or_give_a_usage_error(values: list[str]) -> None:
    try:
        mode, nets = netspec.parse_nets(values)
    except PodmgrError:
        return
    assert mode in ("host", "none", "cni")
    for n in nets:
        req = netspec.NetRequest.parse(n)
        assert req.name.isascii() and names.bad_char(req.name, space=True) is None


@FEW
@given(st.text(max_size=40))
def test_ports_parse_or_give_a_usage_error(text: str) -> None:
    try:
        port = netspec.parse_port(text)
    except PodmgrError:
        return
    assert 1 <= port["hostPort"] <= 65535


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    s = tmp_path_factory.mktemp("state")
    for u in (
        "0b2c8e0e-1111-4c62-9d0c-1f47a8b6b3a0",
        "0b2c8e0e-2222-4c62-9d0c-1f47a8b6b3a0",
        "6733c088-4f7c-4c62-9d0c-1f47a8b6b3a0",
    ):
        (s / "pods" / u).mkdir(parents=True)
    (s / "pods" / ".prep-x").mkdir()
    return s


@FEW
@given(st.one_of(st.text(max_size=40), st.sampled_from(["0b2c", "6733", "0B2C8E0E1111", "."])))
def test_uuid_prefixes_find_one_pod_or_give_podmgrs_error(state: Path, ref: str) -> None:
    try:
        found = podlist.find(state, ref)
    except PodmgrError:
        return
    assert found in os.listdir(state / "pods") and not found.startswith(".")


@FEW
@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_ids_are_uid_t_without_the_no_id_values(value: int) -> None:
    try:
        pod._check_id("app a", "user", value)
    except InvalidError:
        assert value < 0 or value >= 0xFFFFFFFF or value == 0xFFFF
        return
    assert 0 <= value < 0xFFFFFFFF and value != 0xFFFF


@FEW
@given(st.text(alphabet="/.a\n\x00", max_size=12))
def test_working_dirs_are_normalized_absolute_paths(wd: str) -> None:
    try:
        pod._check_working_dir("a", wd)
    except InvalidError:
        return
    assert wd.startswith("/") and "//" not in wd and names.bad_char(wd) is None
    assert os.path.normpath(wd) == (wd.rstrip("/") or "/")


@FEW
@given(st.binary(max_size=200))
def test_env_files_parse_or_give_a_usage_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    f = tmp_path_factory.mktemp("env") / "env"
    f.write_bytes(data)
    try:
        env = cli_pod._env_file(str(f))
    except click.UsageError as e:
        assert str(f) in e.message
        return
    for k, v in env.items():
        assert "\0" not in k + v


_ISO = st.sampled_from(
    [
        ("os/linux/capabilities-retain-set", "set"),
        ("os/linux/capabilities-remove-set", "set"),
        ("os/linux/seccomp-retain-set", "set"),
        ("os/linux/seccomp-remove-set", "set"),
    ]
)
_CALLS = st.one_of(
    st.sampled_from(["read", "write", "CAP_NET_ADMIN", "CAP_BOGUS", "@appc.io/all", "@x/y"]),
    st.text(max_size=12),
)


@FEW
@given(_ISO, st.lists(_CALLS, min_size=1, max_size=4), st.sampled_from([None, "EPERM", "EBOGUS"]))
def test_isolator_sets_apply_or_give_an_invalid_error(
    kind: tuple[str, str], items: list[str], errno: str | None
) -> None:
    from pydantic import TypeAdapter, ValidationError

    value: dict[str, object] = {"set": items}
    if errno and "seccomp" in kind[0]:
        value["errno"] = errno
    try:
        parsed = TypeAdapter(iso.Isolator).validate_python({"name": kind[0], "value": value})
    except ValidationError:
        return  # the manifest's own validation: podmgr.schema makes it an InvalidError
    try:
        iso.check_applicable([parsed], "app a")
    except InvalidError:
        return
    from podmgr import units
    from podmgr.syscalls import SYSCALLS

    for name in items:
        if "capabilities" in kind[0]:
            assert name.removeprefix("CAP_") in units.CAP_NUMBERS
        else:
            assert name in SYSCALLS or name in iso.SECCOMP_SPECIAL
