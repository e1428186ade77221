"""The object store behind the in-process API server: objects, resourceVersions and watch history.

Objects live in one dict per resource (``(group, plural)``) keyed by ``(namespace, name)``, so a get
or an update is O(1) whatever the size of the store. Every write takes the next value of one
global resourceVersion counter, as etcd's revision does, and is appended to a bounded history
that watches replay from; watchers older than that history get ``410 Expired``.

Objects are kept serialised (an :class:`Entry` holds the JSON bytes and the few metadata fields
selectors need), as etcd keeps them: 100,000 VMs take tens of megabytes instead of a gigabyte
of dicts, a list is a join of byte strings, and every read decodes a fresh dict the caller may
change freely.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

GroupResource = tuple[str, str]  # (group, plural): versions of one resource share their objects
ObjectKey = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored object: its JSON, and ``head`` (name, namespace, labels) for selectors."""

    raw: bytes
    head: Mapping[str, Any]

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Entry:
        meta = obj["metadata"]
        head_meta = {"name": meta["name"], "namespace": meta.get("namespace", ""),
                     "resourceVersion": meta.get("resourceVersion", "")}
        if meta.get("labels"):
            head_meta["labels"] = meta["labels"]
        # orjson's result sits in a 4 KiB allocation whatever its length: an exact copy is 6x smaller.
        return cls(bytes(memoryview(orjson.dumps(obj))), {"metadata": head_meta})

    def decode(self) -> dict[str, Any]:
        obj: dict[str, Any] = orjson.loads(self.raw)
        return obj


@dataclass(frozen=True)
class StoreEvent:
    """One change, as a watch delivers it."""

    resource_version: int
    group_resource: GroupResource
    namespace: str
    type: str
    entry: Entry
    previous: Mapping[str, Any] | None = None  # the head before a MODIFIED, for selector transitions


@dataclass(eq=False)
class Watcher:
    """A live subscription; ``None`` on the queue means the server closed it."""

    group_resource: GroupResource
    namespace: str | None
    queue: asyncio.Queue[StoreEvent | None] = field(default_factory=asyncio.Queue)

    def wants(self, event: StoreEvent) -> bool:
        return event.group_resource == self.group_resource and (
            self.namespace is None or self.namespace == event.namespace
        )


class TooOld(Exception):
    """A watch asked for a resourceVersion older than the retained history."""

    def __init__(self, oldest_retained: int) -> None:
        super().__init__(oldest_retained)
        self.oldest_retained = oldest_retained


class Store:
    def __init__(self, watch_history: int = 1000) -> None:
        self._entries: dict[GroupResource, dict[ObjectKey, Entry]] = {}
        self._sorted_keys: dict[GroupResource, list[ObjectKey]] = {}  # cache, dropped on create/delete
        self._history: deque[StoreEvent] = deque(maxlen=max(1, watch_history))
        self._evicted_up_to = 0  # every event after this resourceVersion is still in the history
        self._watchers: set[Watcher] = set()
        self.resource_version = 0
        # Where each resource's watch window starts: kube-apiserver's watch cache for a resource begins
        # at the revision it was set up (server start, CRD established), so a watch from an older
        # resourceVersion gets 410 Expired even when nothing of that resource changed since.
        self._window_start: dict[GroupResource, int] = {}

    def open_window(self, gr: GroupResource) -> None:
        """Start the resource's watch window at the current revision (its watch cache was just set up)."""
        self._window_start[gr] = self.resource_version

    def open_windows_after_restart(self, resources: Iterable[GroupResource]) -> None:
        """A restarted kube-apiserver writes a few objects of its own and builds new watch caches from
        there, so a watch resumed from any resourceVersion read before the restart gets 410 Expired."""
        self._next_version()
        for gr in resources:
            self.open_window(gr)

    # -- reads ---------------------------------------------------------------------------------
    def get(self, gr: GroupResource, namespace: str, name: str) -> dict[str, Any] | None:
        """A fresh copy of the object, or None."""
        entry = self._entries.get(gr, {}).get((namespace, name))
        return entry.decode() if entry is not None else None

    def version_of(self, gr: GroupResource, namespace: str, name: str) -> str | None:
        entry = self._entries.get(gr, {}).get((namespace, name))
        return entry.head["metadata"]["resourceVersion"] if entry is not None else None

    def exists(self, gr: GroupResource, namespace: str, name: str) -> bool:
        return (namespace, name) in self._entries.get(gr, {})

    def count(self, gr: GroupResource) -> int:
        return len(self._entries.get(gr, {}))

    def keys(self, gr: GroupResource, namespace: str | None = None, after: ObjectKey | None = None) -> list[ObjectKey]:
        """Object keys in (namespace, name) order, optionally one namespace, optionally after a key."""
        keys = self._sorted(gr)
        lo, hi = 0, len(keys)
        if namespace is not None:
            lo = bisect.bisect_left(keys, (namespace, ""))
            hi = bisect.bisect_left(keys, (namespace + "\x00", ""))
        if after is not None:
            lo = max(lo, bisect.bisect_right(keys, after))
        return keys[lo:hi]

    def bucket(self, gr: GroupResource) -> Mapping[ObjectKey, Entry]:
        return self._entries.get(gr, {})

    def entries(self, gr: GroupResource, namespace: str | None = None,
                after: ObjectKey | None = None) -> Iterator[Entry]:
        bucket = self._entries.get(gr, {})
        for key in self.keys(gr, namespace, after):
            yield bucket[key]

    def objects(self, gr: GroupResource, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        for entry in self.entries(gr, namespace):
            yield entry.decode()

    def _sorted(self, gr: GroupResource) -> list[ObjectKey]:
        keys = self._sorted_keys.get(gr)
        if keys is None:
            keys = sorted(self._entries.get(gr, {}))
            self._sorted_keys[gr] = keys
        return keys

    # -- writes --------------------------------------------------------------------------------
    def put(self, gr: GroupResource, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new or changed object, stamping its resourceVersion (in ``obj`` too)."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        bucket = self._entries.setdefault(gr, {})
        old = bucket.get(key)
        if old is None:
            self._sorted_keys.pop(gr, None)
        meta["resourceVersion"] = str(self._next_version())
        entry = bucket[key] = Entry.of(obj)
        self._publish(StoreEvent(self.resource_version, gr, key[0], ADDED if old is None else MODIFIED, entry,
                                 None if old is None else old.head))
        return obj

    def remove(self, gr: GroupResource, namespace: str, name: str) -> dict[str, Any] | None:
        """Delete an object; the DELETED event carries it with the deletion's resourceVersion."""
        bucket = self._entries.get(gr, {})
        old = bucket.pop((namespace, name), None)
        if old is None:
            return None
        self._sorted_keys.pop(gr, None)
        gone = old.decode()
        gone["metadata"]["resourceVersion"] = str(self._next_version())
        self._publish(StoreEvent(self.resource_version, gr, namespace, DELETED, Entry.of(gone)))
        return gone

    def drop_resource(self, gr: GroupResource) -> None:
        """Remove every object of a resource (its CRD was deleted), with DELETED events."""
        for namespace, name in list(self._entries.get(gr, {})):
            self.remove(gr, namespace, name)
        self._entries.pop(gr, None)
        self._sorted_keys.pop(gr, None)

    def _next_version(self) -> int:
        self.resource_version += 1
        return self.resource_version

    def _publish(self, event: StoreEvent) -> None:
        if len(self._history) == self._history.maxlen:
            self._evicted_up_to = self._history[0].resource_version
        self._history.append(event)
        for watcher in self._watchers:
            if watcher.wants(event):
                watcher.queue.put_nowait(event)

    # -- watches -------------------------------------------------------------------------------
    def watch(self, gr: GroupResource, namespace: str | None, since: int | None) -> tuple[Watcher, list[StoreEvent]]:
        """Subscribe; returns the watcher and the events to send first.

        ``since=None`` starts with a synthetic ADDED per current object (a watch without
        resourceVersion); otherwise the history after ``since`` is replayed, or :class:`TooOld`.
        Snapshot and subscription happen without an await in between, so no event is lost or doubled.
        """
        watcher = Watcher(gr, namespace)
        if since is None:
            bucket = self._entries.get(gr, {})
            initial = [StoreEvent(0, gr, key[0], ADDED, bucket[key]) for key in self.keys(gr, namespace)]
        else:
            oldest = max(self._evicted_up_to, self._window_start.get(gr, 0))
            if since < oldest:
                raise TooOld(oldest + 1)
            initial = [event for event in self._history if event.resource_version > since and watcher.wants(event)]
        self._watchers.add(watcher)
        return watcher, initial

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        """End every open watch (server stop or restart): clients must watch again."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)
        self._watchers.clear()

    def group_resources(self) -> list[GroupResource]:
        return list(self._entries)
