"""What the guest should call each NIC: the VM's interfaces with MAC and network, and a netplan config.

The guest's names of hot-plugged NICs are not predictable (kubevirt/kubevirt#16693: they depend on
the PCI slot KubeVirt picks), so the cloud-init network config ``netplan_config`` matches each NIC
by MAC and renames it to the interface's name in the VM spec (``set-name``).

The MAC of an interface is its spec ``macAddress``, else the one the running VMI reports, else the
one the observed-MAC annotation records; an interface with none of these (a VM that never ran
without MACs) cannot be matched and is left out of the netplan config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nichotplug.rules.mac import InvalidMac, normalize_mac
from nichotplug.rules.views import VmiView, VmView

__all__ = ["GuestNic", "guest_nics", "netplan_config"]

# A Linux interface name: 1-15 bytes, no "/", ":" or white space, and not "." or "..".
_LINUX_IFNAME = re.compile(r"^(?!\.{1,2}$)[^/:\s]{1,15}$")


@dataclass(frozen=True, slots=True)
class GuestNic:
    """One interface as the guest should see it. ``mac`` "" = unknown; ``guest_name`` its netplan name."""

    interface: str
    mac: str
    network: str
    guest_name: str


def _network_text(vm: VmView, name: str) -> str:
    network = vm.network(name)
    if network is None:
        return "(none)"
    if network.nad is not None:
        return f"{network.nad_namespace}/{network.nad_name}"
    return network.kind or "(other)"


def _known_mac(vm: VmView, vmi: VmiView | None, name: str, spec_mac: str) -> str:
    for candidate in (spec_mac, vmi.interface_macs.get(name, "") if vmi is not None else "",
                      vm.observed_macs.get(name, "")):
        if candidate:
            try:
                return normalize_mac(candidate)
            except InvalidMac:
                continue
    return ""


def guest_nics(vm: VmView, vmi: VmiView | None) -> list[GuestNic]:
    """The VM's interfaces that are not being unplugged, in spec order.

    ``guest_name`` is the interface's name when it is a valid Linux interface name, else
    ``nic<index>`` (index in the spec), so that every rename the netplan config asks for is legal.
    """
    nics = []
    for index, iface in enumerate(vm.interfaces):
        if iface.state == "absent":
            continue
        guest_name = iface.name if _LINUX_IFNAME.match(iface.name) else f"nic{index}"
        nics.append(GuestNic(iface.name, _known_mac(vm, vmi, iface.name, iface.mac),
                             _network_text(vm, iface.name), guest_name))
    return nics


def netplan_config(nics: list[GuestNic]) -> dict[str, Any]:
    """A cloud-init network config (version 2, netplan syntax) matching each NIC with a known MAC.

    Every NIC asks for DHCP on IPv4: the usual default for a Harvester VM network; a person who
    uses static addresses edits the snippet.
    """
    ethernets = {
        nic.guest_name: {"match": {"macaddress": nic.mac}, "set-name": nic.guest_name, "dhcp4": True}
        for nic in nics if nic.mac
    }
    return {"network": {"version": 2, "ethernets": ethernets}}
