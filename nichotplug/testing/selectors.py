"""Label and field selectors as list and watch requests send them.

Label selectors support ``=``, ``==``, ``!=``, ``in (...)``, ``notin (...)``, ``key`` and ``!key``;
field selectors ``metadata.name`` and ``metadata.namespace`` with ``=``, ``==`` and ``!=``.
A malformed selector raises a 400 :class:`StatusError` worded like kube-apiserver's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from nichotplug.testing.errors import StatusError, bad_request

Matcher = Callable[[Mapping[str, Any]], bool]

_SET_TERM = re.compile(r"^\s*(!?)\s*([A-Za-z0-9./_-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")
_EQ_TERM = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
SUPPORTED_FIELDS = ("metadata.name", "metadata.namespace")


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside ``in (...)`` value lists."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return [term for term in terms if term.strip()]


def _label_term(term: str) -> Callable[[Mapping[str, str]], bool]:
    equality = _EQ_TERM.match(term)
    if equality:
        key, op, value = equality.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    set_based = _SET_TERM.match(term)
    if not set_based:
        raise bad_request(f"unable to parse requirement: {term!r}")
    negated, key, op, values_text = set_based.groups()
    if op is None:
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    if negated:
        raise bad_request(f"unable to parse requirement: {term!r}")
    values = frozenset(v.strip() for v in values_text.split(",") if v.strip())
    if op == "in":
        return lambda labels: labels.get(key) in values
    return lambda labels: labels.get(key) not in values


def label_matcher(selector: str | None) -> Matcher | None:
    """A predicate over objects for a labelSelector, or None when it selects everything."""
    if not selector or not selector.strip():
        return None
    checks = [_label_term(term) for term in _split_terms(selector)]

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches


def field_matcher(selector: str | None) -> Matcher | None:
    """A predicate over objects for a fieldSelector, or None when it selects everything."""
    if not selector or not selector.strip():
        return None
    checks: list[Matcher] = []
    for term in _split_terms(selector):
        match = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not match:
            raise bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        path, op, value = match.groups()
        if path not in SUPPORTED_FIELDS:
            raise StatusError(400, "BadRequest", f'field label not supported: {path}')
        attribute = path.split(".", 1)[1]
        checks.append(_field_check(attribute, op != "!=", value))

    def matches(obj: Mapping[str, Any]) -> bool:
        return all(check(obj) for check in checks)

    return matches


def _field_check(attribute: str, equal: bool, value: str) -> Matcher:
    def check(obj: Mapping[str, Any]) -> bool:
        actual: str = obj.get("metadata", {}).get(attribute, "")
        return (actual == value) == equal
    return check


def combine(*matchers: Matcher | None) -> Matcher | None:
    active = [m for m in matchers if m is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]
    return lambda obj: all(m(obj) for m in active)
