"""The interface diff of an UPDATE."""

from __future__ import annotations

from typing import Any

from nichotplug.rules.diff import diff_interfaces
from nichotplug.rules.views import VmView

from .rules_support import iface, vm

A = iface("a", mac="02:00:00:00:00:0a")
B = iface("b", mac="02:00:00:00:00:0b")


def names(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> tuple[list[str], ...]:
    diff = diff_interfaces(VmView.from_dict(vm(interfaces=before)), VmView.from_dict(vm(interfaces=after)))
    return tuple([item.name for item in group] for group in (diff.added, diff.unplugged, diff.changed, diff.removed))


def test_new_interface_is_added() -> None:
    assert names([A], [A, B]) == (["b"], [], [], [])


def test_state_absent_is_an_unplug() -> None:
    assert names([A, B], [A, iface("b", mac="02:00:00:00:00:0b", state="absent")]) == ([], ["b"], [], [])


def test_mac_edit_is_a_change() -> None:
    assert names([A, B], [A, iface("b", mac="02:00:00:00:00:0c")]) == ([], [], ["b"], [])


def test_dropped_interface_is_removed() -> None:
    assert names([A, B], [A]) == ([], [], [], ["b"])


def test_absent_interface_made_active_again_is_added() -> None:
    assert names([A, iface("b", state="absent")], [A, B]) == (["b"], [], [], [])


def test_no_edit_is_not_a_hotplug() -> None:
    assert diff_interfaces(VmView.from_dict(vm()), VmView.from_dict(vm())).is_hotplug is False


def test_an_added_interface_is_a_hotplug() -> None:
    diff = diff_interfaces(VmView.from_dict(vm(interfaces=[A])), VmView.from_dict(vm(interfaces=[A, B])))
    assert diff.is_hotplug is True
