"""Kubernetes Events (core/v1) about the objects nichotplug acts on, aggregated like client-go does.

An Event is how an operator sees, in ``kubectl describe vm``, why a backfill was skipped or a
migration request failed. A repeat of the same (object, type, reason, message) bumps ``count`` and
``lastTimestamp`` of the Event already written instead of creating a new one, so a controller that
retries does not flood etcd. Recording an Event is best effort: :meth:`EventRecorder.emit` never
raises (except cancellation); it logs why it could not write and returns False.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.kube.patch import MERGE_PATCH, NotFound, as_kube_error

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
EVENT_TYPES: frozenset[str] = frozenset({"Normal", "Warning"})
MAX_MESSAGE_CHARS = 1024  # client-go truncates Event messages to this length too
REMEMBERED_EVENTS = 4096  # how many distinct events we remember for aggregation (LRU)
REQUEST_TIMEOUT_SECONDS = 10.0  # an API outage must not leave callers queued behind a hung write


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event's ``involvedObject`` says about the object it is about."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ObjectRef:
        """The reference to a Kubernetes object dict; ValueError when it has no kind or name."""
        metadata = obj.get("metadata")
        if not isinstance(metadata, Mapping) or not metadata.get("name") or not obj.get("kind"):
            raise ValueError("an Event needs an object with kind and metadata.name")
        return cls(
            api_version=str(obj.get("apiVersion", "")), kind=str(obj["kind"]),
            namespace=str(metadata.get("namespace") or ""), name=str(metadata["name"]),
            uid=str(metadata.get("uid") or ""), resource_version=str(metadata.get("resourceVersion") or ""),
        )

    def to_dict(self) -> dict[str, str]:
        ref = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            ref["namespace"] = self.namespace
        if self.uid:
            ref["uid"] = self.uid
        if self.resource_version:
            ref["resourceVersion"] = self.resource_version
        return ref


@dataclass(slots=True)
class _Written:
    """An Event we wrote and may bump: its namespace, name and current count."""

    namespace: str
    name: str
    count: int


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Writes core/v1 Events as ``component`` (``source.component`` and ``reportingComponent``)."""

    def __init__(self, api: ApiClient, component: str = "nichotplug", host: str | None = None) -> None:
        self._core = CoreV1Api(api)
        self.component = component
        self.host = host or os.environ.get("NODE_NAME") or socket.gethostname()
        self.instance = os.environ.get("POD_NAME") or self.host
        self._written: OrderedDict[tuple[str, ...], _Written] = OrderedDict()
        self._lock = asyncio.Lock()  # one writer at a time, so two repeats never create two Events

    async def emit(
        self, obj: Mapping[str, Any] | ObjectRef, type_: str, reason: str, message: str,
    ) -> bool:
        """Record an Event about ``obj``; True when written or aggregated, False (logged) otherwise."""
        try:
            ref = obj if isinstance(obj, ObjectRef) else ObjectRef.from_object(obj)
            if type_ not in EVENT_TYPES:
                raise ValueError(f"Event type must be Normal or Warning, not {type_!r}")
            if not reason:
                raise ValueError("an Event needs a reason")
        except ValueError as exc:
            log.error("not recording event %r: %s", reason, exc)
            return False
        message = message[:MAX_MESSAGE_CHARS]
        async with self._lock:
            try:
                await self._record(ref, type_, reason, message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not record event %s %s on %s %s/%s: %s",
                            type_, reason, ref.kind, ref.namespace, ref.name, exc)
                return False
        return True

    async def _record(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        key = (ref.kind, ref.namespace, ref.name, ref.uid, type_, reason, message)
        written = self._written.get(key)
        if written is not None:
            try:
                await self._bump(written)
                self._written.move_to_end(key)
                return
            except NotFound:
                del self._written[key]  # the Event expired (TTL): write a fresh one
        self._written[key] = await self._create(ref, type_, reason, message)
        while len(self._written) > REMEMBERED_EVENTS:
            self._written.popitem(last=False)

    async def _bump(self, written: _Written) -> None:
        body = {"count": written.count + 1, "lastTimestamp": _now()}
        options: dict[str, Any] = {"_content_type": MERGE_PATCH,  # the client's stubs omit it
                                   "_request_timeout": REQUEST_TIMEOUT_SECONDS}
        try:
            await self._core.patch_namespaced_event(written.name, written.namespace, body, **options)
        except ApiException as exc:
            raise as_kube_error(exc) from exc
        written.count += 1

    async def _create(self, ref: ObjectRef, type_: str, reason: str, message: str) -> _Written:
        namespace = ref.namespace or "default"  # Events about cluster-scoped objects live in default
        name = f"{ref.name}.{time.time_ns():x}"  # client-go's naming: object name + hex nanoseconds
        now = _now()
        body: Any = {  # a plain dict: the client serialises it as is (its stubs want a model)
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": ref.to_dict(),
            "type": type_, "reason": reason, "message": message,
            "source": {"component": self.component, "host": self.host},
            "reportingComponent": self.component, "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self._core.create_namespaced_event(namespace, body, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as exc:
            raise as_kube_error(exc) from exc
        return _Written(namespace=namespace, name=name, count=1)
