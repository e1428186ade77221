"""Decision constructors and the reason catalogue."""

from __future__ import annotations

import pytest

from nichotplug.rules.decision import REASONS, Decision


def test_allow_is_200_without_patch() -> None:
    assert Decision.allow(warnings=["careful"]) == Decision(True, 200, "", "allowed", ("careful",), ())


def test_deny_carries_code_message_and_reason() -> None:
    assert Decision.deny(409, "taken", "mac-collision") == Decision(False, 409, "taken", "mac-collision")


def test_patched_holds_the_ops() -> None:
    op = {"op": "add", "path": "/spec/x", "value": 1}
    assert Decision.patched([op]).patch == (op,)


@pytest.mark.parametrize("code", [422, 200, 302, 600])
def test_deny_refuses_codes_kubectl_would_hide_or_that_are_not_errors(code: int) -> None:
    with pytest.raises(ValueError, match="other than 422"):
        Decision.deny(code, "no", "invalid-mac")


def test_reasons_are_unique_slugs() -> None:
    assert len(set(REASONS)) == len(REASONS)
