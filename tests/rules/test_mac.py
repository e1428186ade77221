"""MAC normalisation, unicast checks and generation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nichotplug.rules.mac import InvalidMac, MacGenerationError, check_unicast_mac, generate_mac, normalize_mac


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
