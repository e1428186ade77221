"""The reflector: list then watch one resource in all namespaces, forever, feeding a cluster view.

It follows client-go's reflector: each resource is listed in pages (``limit`` and ``continue``),
then watched from the list's resourceVersion with bookmarks on. A watch that ends is resumed from
the last resourceVersion seen; a 410 Expired (an ``ERROR`` event or an HTTP 410) re-lists, and the
view forgets what the new list no longer holds; connection errors, 429 and 5xx back off
exponentially (capped, with jitter) and retry forever, so an API server that goes away and comes
back is survived.

The reflector knows the view only through ``ViewFeed``: apply an event, a list completed with these
keys, the server answered, a request failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import random
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi

from nichotplug.kube.records import Key, object_key

log = logging.getLogger(__name__)

ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"

# A watch that delivered nothing but stayed open this long ended normally (the server's timeout),
# so the next one starts at once; one that ends sooner waits a back-off first.
HEALTHY_WATCH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class WatchedResource:
    """A resource the view lists and watches in all namespaces."""

    kind: str
    group: str
    version: str
    plural: str


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Tunables of list+watch; tests shrink them, production keeps the defaults."""

    page_size: int = 500
    # The server ends each watch after timeoutSeconds in [watch_timeout, 2 * watch_timeout), so
    # connections are recycled (client-go does the same with 5-10 minutes).
    watch_timeout: float = 300.0
    connect_timeout: float = 10.0
    list_timeout: float = 60.0  # per page
    backoff_initial: float = 0.2
    backoff_cap: float = 30.0


class ViewFeed(Protocol):
    """What a reflector tells the view it feeds."""

    def apply_event(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> None:
        """One ``ADDED`` / ``MODIFIED`` / ``DELETED`` object of ``kind``."""

    def list_completed(self, kind: str, keys: Set[Key]) -> None:
        """A complete list of ``kind`` held exactly ``keys``: forget the others; synced once all are listed."""

    def heard_from(self, kind: str) -> None:
        """The API server just answered the list or watch of ``kind``."""

    def request_failed(self, kind: str) -> None:
        """A list or watch request of ``kind`` failed and will be retried after a back-off."""


def _return_free_memory_to_the_system() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; elsewhere a no-op).

    Decoding list pages of megabytes leaves free holes in the C heap that glibc keeps mapped (its
    mmap threshold rises to the page size after the first page is freed); after a full list they
    are pure RSS that a pod's memory limit counts: 17 MiB at 30,000 VMs in benchmarks/cluster_view.py.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return
    trim(0)


# -- errors the reflector distinguishes -------------------------------------------------------------


class _Expired(Exception):
    """The resourceVersion we hold is too old (410): re-list."""


class _RequestFailed(Exception):
    """A list or watch request failed in a way worth retrying after a back-off."""


def _status_message(body: bytes) -> str:
    with contextlib.suppress(orjson.JSONDecodeError):
        decoded = orjson.loads(body)
        if isinstance(decoded, dict):
            return str(decoded.get("message") or decoded.get("reason") or "")
    return body[:200].decode("utf-8", "replace")


class _Backoff:
    """Capped exponential back-off with full jitter (sleep uniform(cap_n / 2, cap_n))."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(self.failures, 30))


        return random.uniform(ceiling / 2, ceiling)


class Reflector:
    """List then watch one resource forever, feeding a ``ViewFeed``."""

    def __init__(self, view: ViewFeed, resource: WatchedResource, api: ApiClient,
                 settings: WatchSettings) -> None:
        self.view = view
        self.resource = resource
        self.api = CustomObjectsApi(api)
        self.settings = settings
        self.resource_version: str | None = None  # None: the next step is a (re-)list
        self.backoff = _Backoff(settings.backoff_initial, settings.backoff_cap)

    @property
    def _what(self) -> str:
        return f"{self.resource.plural}.{self.resource.group}"

    async def run(self) -> None:
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    self.backoff.reset()
                if await self._watch():
                    self.backoff.reset()
                    continue  # the server ended a live watch (timeoutSeconds): resume at once
                await asyncio.sleep(self.backoff.next_delay())
            except _Expired as exc:
                log.info("%s: %s; re-listing", self._what, exc)
                self.resource_version = None
            except (_RequestFailed, aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
                self.view.request_failed(self.resource.kind)
                delay = self.backoff.next_delay()
                log.warning("%s: %s; retrying in %.1fs", self._what, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
            except Exception:  # never let one surprise end the watch for good
                self.view.request_failed(self.resource.kind)
                delay = self.backoff.next_delay()
                log.exception("%s: unexpected failure; retrying in %.1fs", self._what, delay)
                await asyncio.sleep(delay)

    async def _request(self, limits: tuple[float, float] | aiohttp.ClientTimeout, **params: Any) -> Any:
        resource = self.resource
        return await self.api.list_cluster_custom_object(
            resource.group, resource.version, resource.plural,
            _preload_content=False, _request_timeout=limits, **params)

    async def _check_status(self, response: Any) -> None:
        if response.status == 200:
            return
        body = await response.read()
        message = f"HTTP {response.status}: {_status_message(body)}"
        if response.status == 410:
            raise _Expired(message)
        raise _RequestFailed(message)

    async def _list(self) -> None:
        """List every page; apply each object; then drop what the list no longer has."""
        listed: set[Key] = set()
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": self.settings.page_size}
            if token:
                params["_continue"] = token
            response = await self._request(
                aiohttp.ClientTimeout(total=self.settings.list_timeout, connect=self.settings.connect_timeout),
                **params)
            try:
                try:
                    await self._check_status(response)
                except _Expired as exc:
                    if token is None:
                        raise _RequestFailed(f"list refused: {exc}") from exc
                    # The continue token expired: start the list again from the first page.
                    token = None
                    listed.clear()
                    continue
                page = orjson.loads(await response.read())
            finally:
                response.release()
            items = page.pop("items", None) or []
            for index, item in enumerate(items):
                items[index] = None  # each object freed once applied: its memory serves the next ones
                key = object_key(item) if isinstance(item, dict) else None
                if key is not None:
                    listed.add(key)
                    self.view.apply_event(self.resource.kind, MODIFIED, item)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                self.resource_version = str(metadata.get("resourceVersion") or "")
                self.view.list_completed(self.resource.kind, listed)
                self.view.heard_from(self.resource.kind)
                del page
                _return_free_memory_to_the_system()
                log.info("%s: listed %d at resourceVersion %s", self._what, len(listed), self.resource_version)
                return

    async def _watch(self) -> bool:
        """Follow one watch connection; True when it was healthy (events, or open a while) before ending."""
        timeout_seconds = int(self.settings.watch_timeout * (1 + random.random()))
        params: dict[str, Any] = {
            "watch": True, "allow_watch_bookmarks": True, "timeout_seconds": max(1, timeout_seconds),
        }
        if self.resource_version:
            params["resource_version"] = self.resource_version
        # No total timeout: a read timeout a little above the server's own end of the watch notices a
        # connection that died silently.
        response = await self._request((self.settings.connect_timeout, timeout_seconds + 30.0), **params)
        opened_at = asyncio.get_running_loop().time()
        delivered = False
        try:
            await self._check_status(response)
            while line := await response.content.readline():
                if line.strip():
                    self._handle_line(line)
                    self.view.heard_from(self.resource.kind)
                    delivered = True
        finally:
            response.release()
        open_for = asyncio.get_running_loop().time() - opened_at
        if open_for >= timeout_seconds:
            self.view.heard_from(self.resource.kind)  # the server ended the watch when asked: it is there
        # A quiet watch the server closed normally is healthy too; only one that ends at once is not.
        return delivered or open_for >= HEALTHY_WATCH_SECONDS

    def _handle_line(self, line: bytes) -> None:
        event = orjson.loads(line)
        event_type = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, dict):
            raise _RequestFailed(f"malformed watch event: {line[:200]!r}")
        if event_type == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason")
            if code == 410:
                raise _Expired(f"watch expired: {message}")
            raise _RequestFailed(f"watch error {code}: {message}")
        metadata = obj.get("metadata")
        resource_version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if event_type in (ADDED, MODIFIED, DELETED):
            self.view.apply_event(self.resource.kind, event_type, obj)
        elif event_type != "BOOKMARK":
            raise _RequestFailed(f"unknown watch event type {event_type!r}")
        if isinstance(resource_version, str) and resource_version:
            self.resource_version = resource_version
