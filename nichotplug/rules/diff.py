"""What an UPDATE does to a VM's interfaces: which are hot-plugged, hot-unplugged, changed or removed."""

from __future__ import annotations

from dataclasses import dataclass

from nichotplug.rules.views import InterfaceView, VmView

__all__ = ["InterfaceDiff", "diff_interfaces"]


@dataclass(frozen=True, slots=True)
class InterfaceDiff:
    """Interfaces of the new VM compared with the old one, each group in spec order.

    - ``added``: new names, or names that were ``absent`` and are active again (a hot-plug);
    - ``unplugged``: names that were active and are now ``state: absent`` (a hot-unplug);
    - ``changed``: other edits of an existing interface (MAC, model, binding): cold changes;
    - ``removed``: names dropped from the list altogether (old views): cold changes too.
    """

    added: tuple[InterfaceView, ...]
    unplugged: tuple[InterfaceView, ...]
    changed: tuple[InterfaceView, ...]
    removed: tuple[InterfaceView, ...] = ()

    @property
    def is_hotplug(self) -> bool:
        """The edit plugs or unplugs an interface, so it must follow the hot-plug rules if the VM runs."""
        return bool(self.added or self.unplugged)


def diff_interfaces(old: VmView, new: VmView) -> InterfaceDiff:
    before = {iface.name: iface for iface in old.interfaces}
    added: list[InterfaceView] = []
    unplugged: list[InterfaceView] = []
    changed: list[InterfaceView] = []
    for iface in new.interfaces:
        previous = before.get(iface.name)
        if previous is None or (previous.state == "absent" and iface.state != "absent"):
            added.append(iface)
        elif iface.state == "absent" and previous.state != "absent":
            unplugged.append(iface)
        elif iface != previous:
            changed.append(iface)
    remaining = {iface.name for iface in new.interfaces}
    removed = tuple(iface for iface in old.interfaces if iface.name not in remaining)
    return InterfaceDiff(tuple(added), tuple(unplugged), tuple(changed), removed)
