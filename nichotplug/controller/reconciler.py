"""Reconcile one VM's MACs from the cluster view's current state: record, then backfill.

Level-triggered: :meth:`MacReconciler.reconcile` never looks at the event that queued the key; it
reads the VM and its VMI as the cache holds them now, so a restart, a dropped watch or a missed event
converges on the next pass. One reconcile makes at most one write:

- a VMI exists -> record its interface MACs in the VM's observed-MAC annotation (if that changes it);
- the VM is halted and its VMI is gone -> write the recorded MACs into interfaces lacking one
  (waiting for the VMI to go is the level-triggered form of Harvester's VMI finalizer, without one),
  except a MAC another VM holds on the interface's cluster network: that interface stays empty (the
  mutating webhook gives it a fresh MAC at the VM's next write, its start at the latest) and a
  ``MacNotBackfilled`` Event on both VMs (the other one only when it is in the controller's scope)
  names the MAC, the interface and the other VM. The check is ours, not left to the validating
  webhook: the controller may write before the webhook configurations exist (a first install).

Writes go through ``kube.patch.json_patch`` with a ``test`` of the resourceVersion the plan was made
from. What happens next is an :class:`Outcome` the worker turns into queue calls: a conflict is
retried with backoff on fresh state; a webhook denial is an Event and a metric and the same write is
not tried again for ``denied_backoff`` seconds unless the planned write changes; anything unexpected is retried
with backoff. Reports (mismatches, names not observed, an unparsable annotation) become Events once
per distinct message per VM, so a periodic resync does not repeat them.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client import ApiClient

from nichotplug.controller import metrics
from nichotplug.controller.scope import EVERYWHERE, ControllerScope
from nichotplug.kube.events import EventRecorder, ObjectRef
from nichotplug.kube.patch import Conflict, Denied, KubeError, NotFound, get_custom_object, json_patch
from nichotplug.rules.backfill import (
    BackfillPlan,
    WithheldMac,
    annotation_patch,
    observed_macs,
    plan_backfill,
)
from nichotplug.rules.cluster import other_holder_of, owner_scope
from nichotplug.rules.macindex import MacOwner
from nichotplug.rules.views import NadView, VmiView, VmView
from nichotplug.rules.vm_object import OBSERVED_MACS_ANNOTATION

log = logging.getLogger(__name__)

VM_GROUP, VM_VERSION, VM_PLURAL = "kubevirt.io", "v1", "virtualmachines"


class VmCache(Protocol):
    """What the controller reads from ``kube.cache.ClusterView``."""

    synced: asyncio.Event  # set once the first list of every kind is in

    def get_vm(self, namespace: str, name: str) -> VmView | None: ...
    def get_vmi(self, namespace: str, name: str) -> VmiView | None: ...
    def get_nad(self, namespace: str, name: str) -> NadView | None: ...
    def owners_of_mac(self, mac: str) -> Collection[MacOwner]: ...
    def mac_numbers_in_use(self, numbers: Collection[int]) -> bool: ...
    def vm_keys(self) -> Iterable[Any]: ...
    def macs_claimed_more_than_once(self) -> list[str]: ...
    def add_listener(self, callback: Callable[[str, str, Any], None]) -> None: ...


class Outcome(enum.Enum):
    """What a reconcile did; the worker maps it to queue calls and the result metric label."""

    SUCCESS = "success"      # wrote, or nothing to write
    SKIPPED = "skipped"      # VM gone, being deleted, or running; or a denied write not retried yet
    CONFLICT = "conflict"    # the VM changed under the write: retry with backoff on fresh state
    DENIED = "denied"        # a webhook refused the write: retry only after the long backoff
    ERROR = "error"          # API unreachable or an unexpected answer: retry with backoff


@dataclass(frozen=True, slots=True)
class _DeniedWrite:
    """A write a webhook refused, remembered so the same write on the same VM is not resent hot."""

    ops: str          # the write without its resourceVersion test: what was refused
    retry_at: float


class FailureBurst:
    """Failed API calls of the controller, told once per outage instead of once per VM.

    When the API server goes away, every queued VM fails its write within seconds (one WARNING each
    was thousands of lines). The first failure of a burst is one WARNING; the others go to DEBUG;
    the first answer from the server afterwards ends the burst with one INFO line counting them.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.failures = 0  # in the current burst
        self._started = 0.0

    def failed(self, what: str, key: str, error: BaseException) -> None:
        log.debug("could not %s VM %s: %s", what, key, error)
        self.failures += 1
        if self.failures == 1:
            self._started = self._clock()
            log.warning("the controller's API calls are failing (could not %s VM %s: %s); each VM is retried "
                        "with backoff, and one line will say when calls work again (every failure at DEBUG)",
                        what, key, error)

    def answered(self) -> None:
        """The API server answered a call (whatever it said): the burst, if any, is over."""
        if self.failures:
            log.info("the controller's API calls work again: %d failed over %.1f s, all retried",
                     self.failures, self._clock() - self._started)
            self.failures = 0


def split_key(key: object) -> tuple[str, str]:
    """(namespace, name) of a ``namespace/name`` key, or of a (namespace, name) pair."""
    if isinstance(key, str):
        namespace, _, name = key.partition("/")
        return namespace, name
    if isinstance(key, tuple) and len(key) == 2:
        return str(key[0]), str(key[1])
    raise ValueError(f"not a namespace/name key: {key!r}")


def vm_ref(vm: VmView) -> ObjectRef:
    """The Event reference to a VM view (Events need kind, name, uid; the view has them)."""
    return ObjectRef(api_version=f"{VM_GROUP}/{VM_VERSION}", kind="VirtualMachine", namespace=vm.namespace,
                     name=vm.name, uid=vm.uid, resource_version=vm.resource_version)


class MacReconciler:
    """Records observed MACs and backfills halted VMs, one VM key at a time."""

    def __init__(
        self, api: ApiClient, cache: VmCache, events: EventRecorder, *,
        denied_backoff: float = 300.0, clock: Callable[[], float] = time.monotonic,
        scope: ControllerScope = EVERYWHERE,
    ) -> None:
        self._api = api
        self._cache = cache
        self._events = events
        self.denied_backoff = denied_backoff
        self._clock = clock
        self._denied: dict[str, _DeniedWrite] = {}
        self._reported: dict[str, set[tuple[str, str]]] = {}
        self._scope = scope  # the namespaces whose VMs it may write, Events included
        self.failures = FailureBurst(clock)

    def denied_retry_in(self, key: str) -> float:
        """Seconds until a denied write of ``key`` may be tried again (0 when none is pending)."""
        denied = self._denied.get(key)
        return max(0.0, denied.retry_at - self._clock()) if denied else 0.0

    async def reconcile(self, key: str) -> Outcome:
        namespace, name = split_key(key)
        vm = self._cache.get_vm(namespace, name)
        if vm is None:
            self._forget(key)
            return Outcome.SKIPPED
        if vm.deleting:
            return Outcome.SKIPPED
        vmi = self._cache.get_vmi(namespace, name)
        if vmi is not None:
            return await self._record(key, vm, vmi)
        plan = plan_backfill(vm, other_holder_of(vm, self._cache))
        await self._report(key, vm, plan)
        if not plan.ops:
            return Outcome.SUCCESS if vm.run_strategy == "Halted" else Outcome.SKIPPED
        outcome = await self._write(key, vm, "backfill", list(plan.ops))
        if outcome is Outcome.SUCCESS:
            metrics.MAC_BACKFILLS.inc(len(plan.backfilled))
            log.info("backfilled MACs of VM %s: %s", key,
                     ", ".join(f"{iface}={mac}" for iface, mac in plan.backfilled))
        return outcome

    def _scope_text(self, owner: MacOwner) -> str:
        scope = owner_scope(owner.nad, self._cache)
        return f"cluster network {scope}" if scope else "the pod network / unlabelled networks"

    def _withheld_reports(self, vm: VmView, withheld: WithheldMac) -> list[tuple[ObjectRef, str, str, str]]:
        """The ``MacNotBackfilled`` Events of one withheld MAC: on ``vm`` and on the VM holding it."""
        holder = withheld.holder
        where = self._scope_text(holder)
        reports = [(vm_ref(vm), "Warning", "MacNotBackfilled",
                    f"interface {withheld.interface} keeps no MAC in the spec: its observed MAC {withheld.mac} is held "
                    f"by VM {holder.namespace}/{holder.vm} interface {holder.interface} on {where}; it gets a new MAC "
                    "at the VM's next write (its start at the latest)")]
        holding_vm = self._cache.get_vm(holder.namespace, holder.vm) if self._scope.covers(holder.namespace) else None
        if holding_vm is not None:
            reports.append((vm_ref(holding_vm), "Warning", "MacNotBackfilled",
                            f"MAC {withheld.mac} of interface {holder.interface} is also recorded for VM {vm.ref} "
                            f"interface {withheld.interface} on {where}; it was not written into that VM's spec, "
                            "which gets a new MAC at its next write (its start at the latest)"))
        return reports

    async def _record(self, key: str, vm: VmView, vmi: VmiView) -> Outcome:
        """Write the VMI's MACs into the annotation when that changes it."""
        observed = observed_macs(vmi)
        ops = annotation_patch(vm, observed)
        if not ops:
            return Outcome.SUCCESS
        if OBSERVED_MACS_ANNOTATION not in vm.annotations:
            # The cached view keeps only our annotation, so it cannot say whether the VM has any
            # others: plan the first recording from the full object (one GET per VM, once).
            try:
                full = await get_custom_object(self._api, VM_GROUP, VM_VERSION, VM_PLURAL, vm.namespace, vm.name)
            except NotFound:
                self.failures.answered()
                return Outcome.SKIPPED
            except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                self.failures.failed("read", key, exc)
                return Outcome.ERROR
            self.failures.answered()
            ops = annotation_patch(full, observed)
            if not ops:
                return Outcome.SUCCESS
        return await self._write(key, vm, "annotation", ops)

    def _forget(self, key: str) -> None:
        self._denied.pop(key, None)
        self._reported.pop(key, None)

    async def _write(self, key: str, vm: VmView, kind: str, ops: list[dict[str, Any]]) -> Outcome:
        # The same change is refused again until something it depends on changes; the VM's
        # resourceVersion alone (status updates bump it) is no reason to knock again.
        fingerprint = json.dumps(ops[1:], sort_keys=True)
        denied = self._denied.get(key)
        if denied is not None:
            if denied.ops == fingerprint and self._clock() < denied.retry_at:
                return Outcome.SKIPPED
            del self._denied[key]
        try:
            await json_patch(self._api, VM_GROUP, VM_VERSION, VM_PLURAL, vm.namespace, vm.name, ops)
        except Conflict:
            self.failures.answered()
            log.debug("VM %s changed under the %s write; retrying on fresh state", key, kind)
            return Outcome.CONFLICT
        except NotFound:
            self.failures.answered()
            return Outcome.SKIPPED  # deleted meanwhile; its DELETED event clears the rest
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, Denied) and not exc.transient:
                self.failures.answered()
                return await self._denied_write(key, vm, kind, fingerprint, exc)
            # Retried with back-off; that includes a webhook that could not judge (not synced yet).
            self.failures.failed(f"write the {kind} of", key, exc)
            return Outcome.ERROR
        self.failures.answered()
        if kind == "annotation":
            metrics.OBSERVED_MAC_WRITES.inc()
        return Outcome.SUCCESS

    async def _denied_write(self, key: str, vm: VmView, kind: str, fingerprint: str, exc: Denied) -> Outcome:
        self._denied[key] = _DeniedWrite(fingerprint, self._clock() + self.denied_backoff)
        metrics.DENIED_WRITES.labels(write=kind).inc()
        what = "MAC backfill" if kind == "backfill" else "observed-MAC annotation"
        message = (f"the {what} was refused: {exc}; not retried for {self.denied_backoff:.0f}s "
                   "unless the planned change differs")
        log.warning("VM %s: %s", key, message)
        await self._events.emit(vm_ref(vm), "Warning", "MacWriteDenied", message)
        return Outcome.DENIED

    async def _report(self, key: str, vm: VmView, plan: BackfillPlan) -> None:
        """Turn what the plan found into Events (and metrics), each once while it stays true."""
        here = vm_ref(vm)
        reports: list[tuple[ObjectRef, str, str, str]] = []
        if plan.annotation_error:
            metrics.ANNOTATION_ERRORS.inc()
            reports.append((here, "Warning", "InvalidMacAnnotation",
                            f"{plan.annotation_error}; only its valid entries are backfilled until it is fixed "
                            "or the VM runs again"))
        for mismatch in plan.kept_mismatches:
            reports.append((here, "Warning", "MacMismatch",
                            f"interface {mismatch.interface} keeps its spec MAC {mismatch.spec_mac}; the guest "
                            f"was last seen with {mismatch.observed_mac}"))
        if plan.not_observed:
            reports.append((here, "Normal", "MacNotObserved",
                            f"interface(s) {', '.join(plan.not_observed)} have no MAC in the spec and none was "
                            "observed yet; start the VM once so their MACs can be recorded"))
        for withheld in plan.withheld:
            reports += self._withheld_reports(vm, withheld)
        # Remember only what is still true, so a problem that was fixed and comes back is told again.
        previous = self._reported.pop(key, set())
        current = {(reason, message) for _, _, reason, message in reports}
        if current:
            self._reported[key] = current
        for about, type_, reason, message in reports:
            if (reason, message) in previous:
                continue
            (log.warning if type_ == "Warning" else log.info)("VM %s/%s: %s: %s", about.namespace, about.name,
                                                              reason, message)
            await self._events.emit(about, type_, reason, message)
