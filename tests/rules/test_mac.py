"""MAC normalisation, unicast checks and generation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nichotplug.rules.mac import (
    InvalidMac,
    MacGenerationError,
    are_macs,
    check_unicast_mac,
    generate_mac,
    mac_number,
    mac_text,
    normalize_mac,
    plain_mac_numbers,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("02:00:00:ab:cd:ef", "02:00:00:ab:cd:ef"),
        ("02:00:00:AB:CD:EF", "02:00:00:ab:cd:ef"),
        ("02-00-00-ab-cd-ef", "02:00:00:ab:cd:ef"),
        ("02-00-00-AB-CD-EF", "02:00:00:ab:cd:ef"),
    ],
)
def test_normalize_accepts_kubevirt_forms(text: str, expected: str) -> None:
    assert normalize_mac(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "02:00:00:ab:cd", "02:00:00:ab:cd:ef:01", "02:00-00:ab:cd:ef", "0200.00ab.cdef", "02:00:00:ab:cd:eg",
     "2:0:0:ab:cd:ef", " 02:00:00:ab:cd:ef", "02:00:00:ab:cd:ef\n", "020000abcdef"],
)
def test_normalize_rejects_other_spellings(text: str) -> None:
    with pytest.raises(InvalidMac, match="is not a MAC address"):
        normalize_mac(text)


def test_normalize_rejects_non_strings() -> None:
    with pytest.raises(InvalidMac):
        normalize_mac(12345)  # type: ignore[arg-type]


def test_unicast_accepts_local_unicast() -> None:
    assert check_unicast_mac("06:AA:bb:cc:dd:ee") == "06:aa:bb:cc:dd:ee"


@pytest.mark.parametrize("text", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "03-00-00-00-00-01"])
def test_unicast_rejects_multicast(text: str) -> None:
    with pytest.raises(InvalidMac, match="multicast"):
        check_unicast_mac(text)


@pytest.mark.parametrize("text", ["00:00:00:00:00:00", "00-00-00-00-00-00"])
def test_unicast_rejects_all_zero(text: str) -> None:
    with pytest.raises(InvalidMac, match="all-zero"):
        check_unicast_mac(text)


@given(st.binary(min_size=6, max_size=6))
def test_generated_mac_is_local_unicast(raw: bytes) -> None:
    mac = generate_mac(random_bytes=lambda _n: raw)
    assert int(mac[:2], 16) & 3 == 2


@given(st.binary(min_size=6, max_size=6))
def test_generated_mac_is_in_normal_form(raw: bytes) -> None:
    mac = generate_mac(random_bytes=lambda _n: raw)
    assert normalize_mac(mac) == mac


def test_generated_mac_keeps_the_other_random_bits() -> None:
    assert generate_mac(random_bytes=lambda _n: bytes.fromhex("ffa1b2c3d4e5")) == "fe:a1:b2:c3:d4:e5"


def test_generate_draws_again_while_taken() -> None:
    draws: Iterator[bytes] = iter([bytes.fromhex("020000000001"), bytes.fromhex("020000000002")])
    mac = generate_mac(is_taken=lambda candidate: candidate == "02:00:00:00:00:01",
                       random_bytes=lambda _n: next(draws))
    assert mac == "02:00:00:00:00:02"


def test_generate_gives_up_on_a_repeating_source() -> None:
    with pytest.raises(MacGenerationError, match="repeats itself"):
        generate_mac(is_taken=lambda _mac: True, random_bytes=lambda _n: bytes(6))


def test_generate_rejects_a_short_random_source() -> None:
    with pytest.raises(MacGenerationError, match="returned 3 bytes"):
        generate_mac(random_bytes=lambda _n: b"abc")


def test_generate_uses_a_random_source_by_default() -> None:
    assert len({generate_mac() for _ in range(20)}) == 20


# -- the webhook's at-a-glance test of a new VM's MACs ---------------------------------------------


@pytest.mark.parametrize(("macs", "expected"), [
    ([], True),
    (["02:00:00:00:00:01", "02:00:00:00:00:02"], True),
    (["fe:ff:ff:ff:ff:ff"], True),  # unicast (second digit even), locally administered
    ([f"02:00:00:00:00:{i:02x}" for i in range(70)], True),
    (["02:00:00:00:00:01", "02:00:00:00:00:01"], False),  # two interfaces, one MAC
    (["02:AA:00:00:00:01"], False),  # upper case: valid, but not the normal form
    (["02-00-00-00-00-01"], False),  # dashes: valid, but not the normal form
    (["03:00:00:00:00:01"], False),  # multicast
    (["02:00:00:00:00:01", "ff:ff:ff:ff:ff:ff"], False),  # broadcast, second
    (["00:00:00:00:00:00"], False),  # all zero
    (["02:00:00:00:00:1"], False),
    (["02:00:00:00:00:01\n"], False),
    (["0x:00:00:00:00:01"], False),
    (["02:00:00:00:00:0g"], False),
    (["02:00:00:00:00:01,02:00:00:00:00:02"], False),  # two MACs in one value
    (["02:00:00:00:00:0\u0661"], False),  # a non-ASCII digit
    ([""], False),
])
def test_plain_mac_numbers(macs: list[str], expected: bool) -> None:
    numbers = plain_mac_numbers(macs)
    assert (numbers is not None) is expected
    if numbers is not None:
        assert numbers == tuple(mac_number(mac) for mac in macs)
        assert [mac_text(number) for number in numbers] == macs


def _plain_by_the_full_rule(macs: list[str]) -> bool:
    """The reference: check_unicast_mac returns each MAC unchanged, and no two are alike."""
    try:
        return [check_unicast_mac(mac) for mac in macs] == macs and len(set(macs)) == len(macs)
    except InvalidMac:
        return False


# Mostly MACs in the normal form or nearly so.
_MAC_LIKE = st.one_of(
    st.builds(lambda raw: raw.hex(":"), st.binary(min_size=6, max_size=6)),
    st.text(alphabet="0123456789abcdefABCDEF:-,x\n\u0661", min_size=15, max_size=19),
)


@given(st.lists(_MAC_LIKE, max_size=5))
def test_plain_mac_numbers_agrees_with_check_unicast_mac(macs: list[str]) -> None:
    numbers = plain_mac_numbers(macs)
    assert (numbers is not None) is _plain_by_the_full_rule(macs)
    if numbers is not None:
        assert numbers == tuple(mac_number(mac) for mac in macs)


@given(st.integers(min_value=0, max_value=2**48 - 1))
def test_mac_text_and_mac_number_are_inverse(number: int) -> None:
    assert mac_number(mac_text(number)) == number
    assert normalize_mac(mac_text(number)) == mac_text(number)


@pytest.mark.parametrize(("values", "expected"), [
    ([], True),
    (["02:00:00:00:00:01", "02-AA-00-00-00-01", "03:00:00:00:00:01"], True),  # any MAC, any spelling
    (["02:00:00:00:00:01", 7], False),
    ([None], False),
    (["02:00-00:00:00:01"], False),  # mixed separators
    (["02:00:00:00:00:01 "], False),
    ([["02:00:00:00:00:01"]], False),
])
def test_are_macs(values: list[object], expected: bool) -> None:
    assert are_macs(values) is expected
