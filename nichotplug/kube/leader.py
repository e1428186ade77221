"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that only one replica writes.

The algorithm is client-go's: a candidate reads the Lease; it takes it when it is absent, free, or
not renewed for ``leaseDurationSeconds`` *as measured on our own monotonic clock since we last saw it
change* (so clock skew between nodes does not matter); every write carries the Lease's
resourceVersion, so two candidates never both win. The leader renews every ``retry_period``; when it
cannot renew for ``renew_deadline`` (shorter than the lease, so it stops before anyone else may
start), or sees another holder, it stops leading at once: the ``on_started_leading`` task is
cancelled and ``on_stopped_leading`` is called. Then it becomes a candidate again.

We do not use kubernetes-asyncio's ``leaderelection`` package: run against the in-process API
server (v36), stopping the server while it leads makes its ``run()`` end with
``ClientConnectorError`` without calling ``onstopped_leading`` (the work would go on unguarded); its
``retry_period`` must be at least one second; it writes local wall time with a ``Z`` suffix; and it
logs a stack trace on every lost race.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

StartedCallback = Callable[[], Awaitable[None]]
StoppedCallback = Callable[[], Awaitable[None] | None]


def default_identity() -> str:
    """This replica's name in the Lease: the pod name, else the host name."""
    return os.environ.get("POD_NAME") or socket.gethostname()


def default_namespace() -> str:
    """Where the Lease lives: the pod's namespace, else ``default``."""
    return os.environ.get("POD_NAMESPACE") or "default"


def _micro_time() -> str:
    """Now as a Kubernetes MicroTime (RFC 3339, microseconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What we read from a Lease: enough to decide whether it is held and by whom."""

    resource_version: str
    holder: str
    lease_seconds: float
    acquire_time: str
    renew_time: str
    transitions: int


class LeaderElector:
    """Campaigns for the Lease ``namespace/name`` as ``identity``; see the module docstring."""

    def __init__(
        self, api: ApiClient, name: str, namespace: str | None = None, identity: str | None = None,
        lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
    ) -> None:
        if not name:
            raise ValueError("the Lease needs a name")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs 0 < retry_period < renew_deadline < lease_duration, "
                             f"got {retry_period}, {renew_deadline}, {lease_duration}")
        self._leases = CoordinationV1Api(api)
        self.name = name
        self.namespace = namespace or default_namespace()
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._leading = False
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic time when the observed record last changed

    @property
    def is_leader(self) -> bool:
        return self._leading

    async def run(self, on_started_leading: StartedCallback, on_stopped_leading: StoppedCallback) -> None:
        """Campaign, lead, and campaign again after losing, until cancelled.

        ``on_started_leading()`` runs as a task while leading and is cancelled when leadership ends;
        ``on_stopped_leading()`` is called after that. Cancelling ``run`` while leading releases the
        Lease so another replica can take over without waiting for it to expire.
        """
        while True:
            await self._acquire()
            lost = True
            try:
                await self._lead(on_started_leading)
            except asyncio.CancelledError:
                lost = False  # a shutdown: the Lease was released, nothing went wrong
                raise
            finally:
                await self._stop_leading(on_stopped_leading, lost=lost)

    async def _acquire(self) -> None:
        log.info("%s is a candidate for lease %s/%s", self.identity, self.namespace, self.name)
        while not await self._try_acquire_or_renew():
            await self._sleep_jittered()
        log.info("%s acquired lease %s/%s", self.identity, self.namespace, self.name)

    async def _lead(self, on_started_leading: StartedCallback) -> None:
        self._leading = True
        work = asyncio.create_task(self._run_started(on_started_leading), name=f"leading:{self.name}")
        try:
            await self._renew_until_lost()
        except asyncio.CancelledError:
            await self._release()
            raise
        finally:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work

    async def _run_started(self, on_started_leading: StartedCallback) -> None:
        try:
            await on_started_leading()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("on_started_leading of lease %s/%s failed", self.namespace, self.name)

    async def _stop_leading(self, on_stopped_leading: StoppedCallback, *, lost: bool) -> None:
        if not self._leading:
            return
        self._leading = False
        if lost:
            log.warning("%s lost lease %s/%s and stopped leading", self.identity, self.namespace, self.name)
        else:
            log.info("%s released lease %s/%s and stopped leading", self.identity, self.namespace, self.name)
        try:
            result = on_stopped_leading()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_stopped_leading of lease %s/%s failed", self.namespace, self.name)

    async def _renew_until_lost(self) -> None:
        """Renew every retry_period; return when renewal failed for renew_deadline or the Lease moved."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.retry_period)
            remaining = last_renewed + self.renew_deadline - time.monotonic()
            renewed = False
            if remaining > 0:
                try:
                    async with asyncio.timeout(remaining):
                        renewed = await self._try_acquire_or_renew()
                except TimeoutError:
                    renewed = False
            if renewed:
                last_renewed = time.monotonic()
                continue
            if self._observed is not None and self._observed.holder not in ("", self.identity):
                log.warning("lease %s/%s is now held by %s", self.namespace, self.name, self._observed.holder)
                return
            if time.monotonic() - last_renewed >= self.renew_deadline:
                log.warning("%s could not renew lease %s/%s within %.1fs", self.identity,
                            self.namespace, self.name, self.renew_deadline)
                return

    async def _sleep_jittered(self) -> None:
        # client-go's jitter factor 1.2: candidates spread out instead of retrying in lock step.
        await asyncio.sleep(self.retry_period * (1 + 0.2 * random.random()))

    async def _try_acquire_or_renew(self) -> bool:
        """One round of client-go's tryAcquireOrRenew; False on any failure (logged, never raised)."""
        try:
            return await self._acquire_or_renew_once()
        except asyncio.CancelledError:
            raise
        except ApiException as exc:
            if exc.status != 409:  # a lost race is normal; anything else is worth a line
                log.warning("lease %s/%s: HTTP %s %s", self.namespace, self.name, exc.status, exc.reason)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("lease %s/%s: API server unreachable: %s", self.namespace, self.name, exc)
        except Exception as exc:  # e.g. a closed client: still only a failed round, never the end of run()
            log.warning("lease %s/%s: %s: %s", self.namespace, self.name, type(exc).__name__, exc)
        return False

    async def _acquire_or_renew_once(self) -> bool:
        timeout = max(self.retry_period, 1.0)
        try:
            lease = await self._leases.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self._leases.create_namespaced_lease(
                self.namespace, self._lease_body(None), _request_timeout=timeout)
            self._observe(None)
            return True
        record = _record_of(lease)
        self._observe(record)
        held_by_other = record.holder not in ("", self.identity)
        expired = time.monotonic() > self._observed_at + record.lease_seconds
        if held_by_other and not expired:
            return False
        await self._leases.replace_namespaced_lease(
            self.name, self.namespace, self._lease_body(record), _request_timeout=timeout)
        return True

    def _observe(self, record: LeaseRecord | None) -> None:
        comparable = None if record is None else (record.holder, record.renew_time, record.resource_version)
        previous = None if self._observed is None else (
            self._observed.holder, self._observed.renew_time, self._observed.resource_version)
        if record is None or comparable != previous:
            self._observed_at = time.monotonic()
        self._observed = record

    def _lease_body(self, current: LeaseRecord | None) -> Any:  # a dict; the client's stubs want a model
        """The Lease that makes us the holder, based on ``current`` (None: create a new one)."""
        now = _micro_time()
        ours = current is not None and current.holder == self.identity
        # Counted as client-go counts it: every time a candidate that did not hold the Lease takes it,
        # a released one (holder cleared) included.
        transitions = 0 if current is None else current.transitions + (0 if ours else 1)
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if current is not None:
            metadata["resourceVersion"] = current.resource_version
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, math.ceil(self.lease_duration)),
                "acquireTime": current.acquire_time if ours and current is not None else now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def _release(self) -> None:
        """Give the Lease up (holder cleared) so a successor need not wait for it to expire."""
        try:
            async with asyncio.timeout(max(self.retry_period, 1.0)):
                latest = _record_of(await self._leases.read_namespaced_lease(self.name, self.namespace))
                if latest.holder != self.identity:
                    return
                body = self._lease_body(latest)
                body["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1})
                await self._leases.replace_namespaced_lease(self.name, self.namespace, body)
        except Exception as exc:  # releasing is a courtesy; the lease expires anyway
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)


def _record_of(lease: Any) -> LeaseRecord:
    """The parts of a kubernetes-asyncio ``V1Lease`` model that leader election reads."""
    spec = lease.spec
    return LeaseRecord(
        resource_version=str(lease.metadata.resource_version or ""),
        holder=str(getattr(spec, "holder_identity", None) or ""),
        lease_seconds=float(getattr(spec, "lease_duration_seconds", None) or 0),
        acquire_time=_as_micro_time(getattr(spec, "acquire_time", None)),
        renew_time=_as_micro_time(getattr(spec, "renew_time", None)),
        transitions=int(getattr(spec, "lease_transitions", None) or 0),
    )


def _as_micro_time(value: Any) -> str:
    """A MicroTime read back (a datetime from the client model, or a string) as text to write again."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        text: str = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return text
    return str(value) if value else ""
