"""What the rules need to know about the rest of the cluster, and a plain in-memory implementation.

``ClusterState`` is the read-only question set the rules ask (a VMI by name, a NAD by name, the
owners of a MAC). ``kube.cache.ClusterView`` answers it from list+watch; ``StaticCluster`` answers
it from plain lists, for rule tests, the kubectl plugin and the action planning.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Protocol

from nichotplug.rules.macindex import MacIndex, MacOwner
from nichotplug.rules.views import NadView, VmiView, VmView

__all__ = ["ClusterState", "MacOwner", "StaticCluster", "other_holder", "other_holder_of", "owner_scope"]


class ClusterState(Protocol):
    def get_vmi(self, namespace: str, name: str) -> VmiView | None: ...

    def get_nad(self, namespace: str, name: str) -> NadView | None: ...

    def owners_of_mac(self, mac: str) -> Collection[MacOwner]:
        """Every VM interface using ``mac`` (normalised), whatever its scope."""
        ...

    def mac_numbers_in_use(self, numbers: Collection[int]) -> bool:
        """Whether some VM interface uses a MAC whose ``mac.mac_number`` is one of ``numbers``:
        ``any(owners_of_mac(mac))``, asked of every MAC a new VM brings, so worth a single call."""
        ...


def owner_scope(nad: tuple[str, str] | None, cluster: ClusterState) -> str:
    """The MAC-uniqueness scope of an interface on ``nad``: its NAD's cluster-network label, else "".

    The pod network, unlabelled NADs and NADs that do not exist (yet) share the empty scope.
    """
    if nad is None:
        return ""
    view = cluster.get_nad(*nad)
    return view.cluster_network if view is not None else ""


def other_holder(namespace: str, name: str, mac: str, scope: str, cluster: ClusterState) -> MacOwner | None:
    """An interface of a VM other than ``namespace/name`` that uses ``mac`` (normalised) in ``scope``:
    in its spec, or recorded by its observed-MAC annotation. None when no other VM does.

    Owners are tried sorted, so the same question always names the same holder. The VM's own
    entries are skipped: the index holds its state before the write being judged.
    """
    owners = cluster.owners_of_mac(mac)
    if not owners:
        return None  # the usual case: nobody uses it, whatever the scope
    for owner in sorted(owners):
        if (owner.namespace, owner.vm) == (namespace, name):
            continue
        if owner_scope(owner.nad, cluster) == scope:
            return owner
    return None


def other_holder_of(vm: VmView, cluster: ClusterState) -> Callable[[str, str], MacOwner | None]:
    """``(interface name, mac) -> other_holder`` in the scope of that interface of ``vm``: the
    question the backfill asks before copying a recorded MAC into the spec."""
    nads = vm.network_nads()

    def holder(interface: str, mac: str) -> MacOwner | None:
        return other_holder(vm.namespace, vm.name, mac, owner_scope(nads.get(interface), cluster), cluster)
    return holder


class StaticCluster:
    """A ClusterState over fixed lists of VM, VMI and NAD dicts (or views)."""

    def __init__(
        self,
        *,
        vms: Iterable[Mapping[str, Any] | VmView] = (),
        vmis: Iterable[Mapping[str, Any] | VmiView] = (),
        nads: Iterable[Mapping[str, Any] | NadView] = (),
    ) -> None:
        self.macs = MacIndex()
        for vm in vms:
            self.macs.update_vm(vm)
        self._vmis: dict[tuple[str, str], VmiView] = {}
        for vmi in vmis:
            vmi_view = vmi if isinstance(vmi, VmiView) else VmiView.from_dict(vmi)
            self._vmis[(vmi_view.namespace, vmi_view.name)] = vmi_view
        self._nads: dict[tuple[str, str], NadView] = {}
        for nad in nads:
            nad_view = nad if isinstance(nad, NadView) else NadView.from_dict(nad)
            self._nads[(nad_view.namespace, nad_view.name)] = nad_view

    def get_vmi(self, namespace: str, name: str) -> VmiView | None:
        return self._vmis.get((namespace, name))

    def get_nad(self, namespace: str, name: str) -> NadView | None:
        return self._nads.get((namespace, name))

    def owners_of_mac(self, mac: str) -> Collection[MacOwner]:
        return self.macs.owners(mac)

    def mac_numbers_in_use(self, numbers: Collection[int]) -> bool:
        return self.macs.numbers_used(numbers)
