"""MAC addresses: normalisation, unicast validation and collision-free generation.

KubeVirt accepts a 48-bit MAC written as six two-digit hex groups separated by all colons or all
dashes. We compare MACs only in one normal form (lowercase, colon separated) so that
``AA-BB-...`` and ``aa:bb:...`` are recognised as the same address (Harvester compares the raw
strings, which lets a differently spelled duplicate through).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "CANONICAL_MAC_PATTERN",
    "InvalidMac",
    "MacGenerationError",
    "are_macs",
    "check_unicast_mac",
    "generate_mac",
    "mac_number",
    "mac_text",
    "normalize_mac",
    "plain_mac_numbers",
]

# Six hex pairs with one consistent separator; the backreference forbids mixing ':' and '-'.
_MAC_FORMS = re.compile(r"[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(?:\1[0-9A-Fa-f]{2}){4}")
# The normal form itself. Nearly every MAC we see is already written so (KubeVirt, Harvester and
# our own generator all write it), and then normalising is one match and no new string.
CANONICAL_MAC_PATTERN = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_CANONICAL = re.compile(CANONICAL_MAC_PATTERN)
# The normal form of a unicast MAC: the first byte's second hex digit is even (multicast bit clear).
_CANONICAL_UNICAST = re.compile(r"[0-9a-f][02468ace](?::[0-9a-f]{2}){5}")
# Second hex digit of a first byte with the multicast (lowest) bit set.
_MULTICAST_DIGITS = frozenset("13579bdf")

_ALL_ZERO = "00:00:00:00:00:00"

# Far more than a healthy random source ever needs: with 46 free bits, even a cluster with a
# million MACs in use redraws about once per 70 million generations.
_MAX_DRAWS = 64


class InvalidMac(ValueError):
    """A MAC address that KubeVirt would not accept, or that may not be used for a NIC."""


class MacGenerationError(RuntimeError):
    """No free MAC after many draws: the random source is broken (it keeps repeating itself)."""


def normalize_mac(text: str) -> str:
    """Return ``text`` as a lowercase, colon-separated MAC, or raise InvalidMac."""
    if type(text) is str and _CANONICAL.fullmatch(text) is not None:
        return text
    if not isinstance(text, str) or len(text) != 17 or _MAC_FORMS.fullmatch(text) is None:
        raise InvalidMac(
            f"{text!r} is not a MAC address: write six two-digit hex groups separated by ':' or '-', "
            "e.g. 02:00:00:ab:cd:ef"
        )
    return text.lower().replace("-", ":")


def check_unicast_mac(text: str) -> str:
    """Normalise ``text`` and require an address a NIC may own: not multicast, not all zero."""
    mac = text if type(text) is str and _CANONICAL.fullmatch(text) is not None else normalize_mac(text)
    if mac == _ALL_ZERO:
        raise InvalidMac(f"{text} is the all-zero MAC address, which no interface may use")
    if mac[1] in _MULTICAST_DIGITS:
        raise InvalidMac(
            f"{text} is a multicast MAC address (lowest bit of the first byte set); "
            "an interface needs a unicast address, e.g. one starting with 02"
        )
    return mac


def are_macs(values: Iterable[Any]) -> bool:
    """Whether ``normalize_mac`` accepts every value (decoded JSON: any type). The regex runs from C,
    through ``map``: no Python frame per value."""
    try:
        return all(map(_MAC_FORMS.fullmatch, values))
    except TypeError:  # a value that is not text
        return False


def mac_number(mac: str) -> int:
    """The 48 bits of a MAC in the normal form, as the MAC indexes key it; ValueError for other text."""
    if len(mac) != 17:
        raise ValueError(mac)
    return int(mac.replace(":", ""), 16)


def mac_text(number: int) -> str:
    """The MAC in the normal form whose ``mac_number`` is ``number`` (a 48-bit int)."""
    return number.to_bytes(6, "big").hex(":")


def plain_mac_numbers(macs: Sequence[str]) -> tuple[int, ...] | None:
    """``mac_number`` of each MAC when ``check_unicast_mac`` returns every one unchanged (unicast, not
    all zero, already in the normal form) and no two are alike; None otherwise.

    The webhook's quickest route asks this of nearly every CREATE and probes the MAC index with the
    numbers. The regex runs from C through ``map``: no Python frame per MAC for the check.
    """
    if _ALL_ZERO in macs or not all(map(_CANONICAL_UNICAST.fullmatch, macs)) or len(set(macs)) != len(macs):
        return None
    return tuple(map(mac_number, macs))


def _never_taken(_mac: str) -> bool:
    return False


def generate_mac(
    is_taken: Callable[[str], bool] = _never_taken,
    random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> str:
    """Draw a random locally administered unicast MAC, drawing again while ``is_taken(mac)``.

    Raises MacGenerationError only when ``random_bytes`` keeps producing taken addresses.
    """
    for _ in range(_MAX_DRAWS):
        raw = bytearray(random_bytes(6)[:6])
        if len(raw) != 6:
            raise MacGenerationError(f"the random source returned {len(raw)} bytes, 6 are needed")
        raw[0] = (raw[0] | 0x02) & 0xFE  # locally administered, unicast
        mac = ":".join(f"{byte:02x}" for byte in raw)
        if not is_taken(mac):
            return mac
    raise MacGenerationError(f"no free MAC address after {_MAX_DRAWS} random draws; the random source repeats itself")
