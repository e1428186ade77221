"""Duplicate-MAC audit: collisions that slipped past admission, found from the cache's MAC index.

The validating webhook refuses a MAC already used in the same cluster network, but two creates at
the same instant can both pass (each is judged against a cache that does not hold the other yet).
The audit walks every VM's MAC claims (spec MACs, and recorded MACs of interfaces without one), asks
the index who else owns each MAC (a dict hit), and groups those owners by scope; more than one owner
in one scope is a duplicate. It reports each new duplicate once as a Warning Event on every VM
involved and keeps ``nichotplug_duplicate_macs`` at the current count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from nichotplug.controller import metrics
from nichotplug.controller.reconciler import VmCache, vm_ref
from nichotplug.controller.scope import EVERYWHERE, ControllerScope
from nichotplug.kube.events import EventRecorder
from nichotplug.rules.cluster import ClusterState, owner_scope
from nichotplug.rules.macindex import MacOwner
from nichotplug.rules.views import VmView

log = logging.getLogger(__name__)

_YIELD_EVERY = 500  # VMs between yields to the event loop, so webhooks stay responsive during an audit


@dataclass(frozen=True, slots=True)
class DuplicateMac:
    """One MAC owned by more than one VM interface in the same scope (cluster network; "" = pod/unlabelled)."""

    mac: str
    scope: str
    owners: tuple[MacOwner, ...]  # sorted, so the same duplicate always compares equal

    def describe(self) -> str:
        where = f"cluster network {self.scope}" if self.scope else "the pod network / unlabelled networks"
        users = ", ".join(f"{o.namespace}/{o.vm} interface {o.interface}" for o in self.owners)
        return f"MAC {self.mac} is used more than once on {where}: {users}"


def _claimed_macs(vm: VmView) -> Iterator[str]:
    """The MACs ``vm`` claims, in the index's spelling (spec MAC, else the recorded one)."""
    for interface in vm.interfaces:
        mac = interface.mac or vm.observed_macs.get(interface.name, "")
        if mac:
            # Valid MACs normalise by case and separator only; an invalid one is in no index.
            yield mac.lower().replace("-", ":")


def duplicates_of_mac(mac: str, cluster: ClusterState) -> list[DuplicateMac]:
    """The duplicates of one MAC: per scope, its owners when there is more than one."""
    return _duplicates_among(mac, cluster.owners_of_mac(mac), cluster)


def _duplicates_among(mac: str, owners: Collection[MacOwner], cluster: ClusterState) -> list[DuplicateMac]:
    by_scope: dict[str, list[MacOwner]] = defaultdict(list)
    for owner in owners:
        by_scope[owner_scope(owner.nad, cluster)].append(owner)
    return [DuplicateMac(mac, scope, tuple(sorted(group))) for scope, group in sorted(by_scope.items())
            if len(group) > 1]


def duplicates_of(vm: VmView, cluster: ClusterState, seen_macs: set[str]) -> list[DuplicateMac]:
    """The duplicates involving ``vm``'s MACs that are not in ``seen_macs`` yet (which it extends)."""
    found: list[DuplicateMac] = []
    for mac in _claimed_macs(vm):
        owners = cluster.owners_of_mac(mac)
        if len(owners) < 2 or mac in seen_macs:
            continue
        seen_macs.add(mac)
        found.extend(_duplicates_among(mac, owners, cluster))
    return found


def find_duplicate_macs(vms: Iterable[VmView], cluster: ClusterState) -> list[DuplicateMac]:
    """Every duplicate among the MACs of ``vms`` (pure; the async audit does the same in slices)."""
    seen: set[str] = set()
    found: list[DuplicateMac] = []
    for vm in vms:
        found.extend(duplicates_of(vm, cluster, seen))
    return found


class DuplicateMacAuditor:
    """Runs the audit over the cache, reports new duplicates as Events, keeps the gauge current."""

    def __init__(self, cache: VmCache, events: EventRecorder, *, scope: ControllerScope = EVERYWHERE) -> None:
        self._cache = cache
        self._events = events
        self._scope = scope
        self._reported: set[DuplicateMac] = set()

    async def audit(self) -> list[DuplicateMac]:
        """One pass over the MACs the cache says are claimed more than once; returns the duplicates
        that involve a VM in the controller's scope (the others are another install's to report)."""
        found = [duplicate for duplicate in await self._shared_macs_pass(self._cache.macs_claimed_more_than_once())
                 if any(self._scope.covers(owner.namespace) for owner in duplicate.owners)]
        metrics.DUPLICATE_MACS.set(len(found))
        current = set(found)
        for duplicate in found:
            if duplicate not in self._reported:
                await self._report(duplicate)
        self._reported = current  # a duplicate that was fixed and comes back is reported again
        return found

    async def _shared_macs_pass(self, macs: list[str]) -> list[DuplicateMac]:
        """``kube.cache.ClusterView`` keeps the MACs claimed more than once: only those can collide.

        At 100,000 VMs this is a few shared MACs instead of rebuilding 100,000 VM views (seconds of CPU).
        """
        found: list[DuplicateMac] = []
        for count, mac in enumerate(macs, start=1):
            found.extend(duplicates_of_mac(mac, self._cache))
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return found

    async def _report(self, duplicate: DuplicateMac) -> None:
        message = duplicate.describe()
        log.warning("%s", message)
        for namespace, name in sorted({(o.namespace, o.vm) for o in duplicate.owners}):
            if not self._scope.covers(namespace):
                continue  # Events are writes: only in the namespaces this controller may write in
            vm = self._cache.get_vm(namespace, name)
            if vm is not None:
                await self._events.emit(vm_ref(vm), "Warning", "DuplicateMac", message)
