"""The MAC controller: cache events -> work queue -> bounded workers -> reconciler, under a Lease.

:class:`MacController` is one leadership term's worth of work: it waits for the cluster view to
sync, queues every VM, then runs ``workers`` reconcile loops, a periodic resync (every VM queued
again, so anything a missed event left behind converges) and the periodic duplicate-MAC audit,
until cancelled. Cache listener callbacks (VM and VMI events) queue the VM's key while a term runs.

:func:`run_controller` is what ``nichotplug serve`` calls: it campaigns for the Lease and runs a
term while it leads. Losing the Lease cancels the term at once (workers stop mid-request), and the
replica campaigns again; webhooks keep being served by the rest of the process meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubernetes_asyncio.client import ApiClient

from nichotplug.controller import metrics
from nichotplug.controller.audit import DuplicateMacAuditor
from nichotplug.controller.reconciler import MacReconciler, Outcome, VmCache, split_key
from nichotplug.controller.scope import EVERYWHERE, ControllerScope
from nichotplug.controller.workqueue import ShutDown, WorkQueue
from nichotplug.kube.events import EventRecorder
from nichotplug.kube.leader import LeaderElector

log = logging.getLogger(__name__)

# Listener kinds that name a VM key (a VMI has its VM's namespace and name).
_VM_KINDS = frozenset({"VirtualMachine", "virtualmachines", "vm"})
_VMI_KINDS = frozenset({"VirtualMachineInstance", "virtualmachineinstances", "vmi"})


def _object_key(obj: Any) -> str | None:
    """``namespace/name`` of a watched object given as a dict or a view; None when it has neither."""
    if isinstance(obj, Mapping):
        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping):
            return None
        namespace, name = metadata.get("namespace"), metadata.get("name")
    else:
        namespace, name = getattr(obj, "namespace", None), getattr(obj, "name", None)
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    return f"{namespace}/{name}"


class MacController:
    """Queue, workers, resync and audit over one cluster view; ``run()`` is one leadership term."""

    def __init__(
        self, api: ApiClient, cache: VmCache, *, events: EventRecorder | None = None, workers: int = 4,
        resync_period: float = 300.0, audit_period: float = 300.0, denied_backoff: float = 300.0,
        retry_base_delay: float = 0.05, retry_max_delay: float = 60.0, name: str = "mac",
        scope: ControllerScope = EVERYWHERE,
    ) -> None:
        if workers < 1:
            raise ValueError("the controller needs at least one worker")
        self._cache = cache
        self._events = events or EventRecorder(api)
        self.reconciler = MacReconciler(api, cache, self._events, denied_backoff=denied_backoff, scope=scope)
        self.auditor = DuplicateMacAuditor(cache, self._events, scope=scope)
        self.scope = scope
        self.name = name
        self.workers = workers
        self.resync_period = resync_period
        self.audit_period = audit_period
        self._retry = (retry_base_delay, retry_max_delay)
        self._queue: WorkQueue | None = None
        self.reconciles = 0  # reconciles this instance has run, over all its terms
        cache.add_listener(self._on_cache_event)

    @property
    def cache(self) -> VmCache:
        """The cluster view this controller reads."""
        return self._cache

    @property
    def queue(self) -> WorkQueue | None:
        """The current term's queue (None while not running)."""
        return self._queue

    def _on_cache_event(self, kind: str, event_type: str, obj: Any) -> None:
        queue = self._queue
        if queue is None or (kind not in _VM_KINDS and kind not in _VMI_KINDS):
            return
        key = _object_key(obj)
        if key is not None and self.scope.covers(split_key(key)[0]):
            queue.add(key)

    async def run(self) -> None:
        """Reconcile until cancelled."""
        queue = WorkQueue(self.name, base_delay=self._retry[0], max_delay=self._retry[1])
        self._queue = queue
        try:
            await self._synced()
            self.enqueue_all()
            async with asyncio.TaskGroup() as group:
                for index in range(self.workers):
                    group.create_task(self._worker(queue), name=f"{self.name}-worker-{index}")
                group.create_task(self._every(self.resync_period, self.enqueue_all), name=f"{self.name}-resync")
                group.create_task(self._every(self.audit_period, self.auditor.audit), name=f"{self.name}-audit")
        finally:
            queue.shut_down()
            if self._queue is queue:
                self._queue = None

    async def _synced(self) -> None:
        await self._cache.synced.wait()

    def enqueue_all(self) -> None:
        """Queue every VM the cache knows (the resync)."""
        queue = self._queue
        if queue is None:
            return
        for key in list(self._cache.vm_keys()):
            namespace, name = split_key(key)
            if self.scope.covers(namespace):
                queue.add(f"{namespace}/{name}")

    async def _every(self, period: float, action: Callable[[], Awaitable[object] | None]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                result = action()
                if result is not None:
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("periodic %s failed; trying again in %.0fs", getattr(action, "__name__", action), period)

    async def _worker(self, queue: WorkQueue) -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            try:
                await self._process(queue, key)
            finally:
                queue.done(key)

    async def _process(self, queue: WorkQueue, key: str) -> None:
        started = time.perf_counter()
        try:
            outcome = await self.reconciler.reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reconcile of VM %s failed", key)
            outcome = Outcome.ERROR
        self.reconciles += 1
        metrics.RECONCILE_TIME.labels(controller=metrics.CONTROLLER_NAME).observe(time.perf_counter() - started)
        metrics.RECONCILE_TOTAL.labels(controller=metrics.CONTROLLER_NAME, result=outcome.value).inc()
        if outcome in (Outcome.CONFLICT, Outcome.ERROR):
            queue.add_rate_limited(key)
            return
        queue.forget(key)
        if outcome is Outcome.DENIED:
            queue.add_after(key, self.reconciler.denied_retry_in(key))


async def run_controller(
    api: ApiClient, view: VmCache, *, namespace: str, identity: str,
    lease_name: str = "nichotplug-controller", lease_duration: float = 15.0, renew_deadline: float = 10.0,
    retry_period: float = 2.0, workers: int = 4, resync_period: float = 300.0, audit_period: float = 300.0,
    denied_backoff: float = 300.0, events: EventRecorder | None = None, controller: MacController | None = None,
    scope: ControllerScope = EVERYWHERE,
) -> None:
    """Run the MAC controller whenever this replica holds the Lease ``namespace/lease_name``; until cancelled.

    ``view`` is the started ``kube.cache.ClusterView`` the webhooks also read; this never starts or
    stops it. Cancelling releases the Lease so another replica takes over without waiting. Pass
    ``controller`` to run a prepared :class:`MacController` (then ``workers`` and the periods given
    here are ignored). ``scope``: the namespaces it writes VMs in (every one by default).
    """
    term = controller or MacController(api, view, events=events, workers=workers, resync_period=resync_period,
                                       audit_period=audit_period, denied_backoff=denied_backoff, scope=scope)
    elector = LeaderElector(api, lease_name, namespace, identity, lease_duration=lease_duration,
                            renew_deadline=renew_deadline, retry_period=retry_period)
    leader_gauge = metrics.LEADER.labels(name=lease_name)
    leader_gauge.set(0)

    async def lead() -> None:
        leader_gauge.set(1)
        log.info("%s leads %s/%s: reconciling", identity, namespace, lease_name)
        try:
            await term.run()
        finally:
            leader_gauge.set(0)

    def stopped() -> None:
        leader_gauge.set(0)
        log.info("%s no longer leads %s/%s: reconciling stopped", identity, namespace, lease_name)

    try:
        await elector.run(lead, stopped)
    finally:
        leader_gauge.set(0)
