"""The in-process API server's reads: get, list (paged), watch (with bookmarks), and their Table forms.

Each verb is a function of the server (its store and registry) and the :class:`Call` being served.
Lists and watches send the stored JSON as it is, so 100,000 objects are served without decoding
them; only a version other than the storage version, or a Table for ``kubectl get``, decodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from nichotplug.testing import tables, writes
from nichotplug.testing.errors import expired, method_not_allowed, not_found
from nichotplug.testing.resources import ResourceInfo, is_custom
from nichotplug.testing.routing import (
    GO_TRUE,
    JSON,
    Call,
    Target,
    bytes_response,
    int_param,
    json_response,
)
from nichotplug.testing.selectors import Matcher, combine, field_matcher
from nichotplug.testing.store import ADDED, DELETED, MODIFIED, Entry, Store, StoreEvent, TooOld, Watcher

if TYPE_CHECKING:
    from nichotplug.testing.server import ApiServer


def render(info: ResourceInfo, obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """``obj`` as ``info``'s version shows it."""
    if obj.get("apiVersion") == info.group_version:
        return obj
    return {**obj, "apiVersion": info.group_version}


def existing(store: Store, target: Target) -> dict[str, Any]:
    """The stored object ``target`` names; 404 when there is none."""
    obj = store.get(target.gr, target.namespace, target.name)
    if obj is None:
        raise not_found(target.info.plural, target.info.group, target.name)
    return obj


async def get(server: ApiServer, call: Call) -> web.StreamResponse:
    obj = render(call.target.info, existing(server.store, call.target))
    table = _table(call, [obj], resource_version="")
    if table is not None:
        return table
    return json_response(obj, warnings=call.warnings)


def _wants_table(call: Call) -> bool:
    return bool(tables.wants_table(call.request.headers.get("Accept")))


def _table(call: Call, objects: Sequence[Mapping[str, Any]], *, resource_version: str,
           continue_token: str = "") -> web.Response | None:
    """The meta.k8s.io Table ``kubectl get`` asks for, when the resource has printer columns."""
    if not tables.wants_table(call.request.headers.get("Accept")):
        return None
    table = tables.table(call.target.info, objects, resource_version=resource_version,
                         continue_token=continue_token, include_object=call.query.get("includeObject", "Metadata"))
    if table is None:
        return None
    return json_response(table, warnings=call.warnings, content_type=tables.TABLE_MEDIA_TYPE)


async def list_objects(server: ApiServer, call: Call) -> web.StreamResponse:
    target, query = call.target, call.query
    if target.name:
        raise method_not_allowed()
    matcher = call.matcher()
    limit = int_param(query, "limit")
    after = None
    if query.get("continue"):
        _, after = writes.decode_continue(query["continue"], target.info.namespaced)
    namespace = target.namespace if target.info.namespaced and target.namespace else None
    keys = server.store.keys(target.gr, namespace, after)
    bucket = server.store.bucket(target.gr)
    selected: list[Entry] = []
    stopped_at = None
    for index, key in enumerate(keys):
        entry = bucket[key]
        if matcher is not None and not matcher(entry.head):
            continue
        if limit and len(selected) == limit:
            stopped_at = index
            break
        selected.append(entry)
    metadata: dict[str, Any] = {}
    if stopped_at is not None:
        last = selected[-1].head["metadata"]
        metadata["continue"] = writes.encode_continue(server.store.resource_version,
                                                      (last["namespace"], last["name"]))
        if matcher is None:
            metadata["remainingItemCount"] = len(keys) - stopped_at
    elif is_custom(target.info):
        metadata["continue"] = ""  # custom resource lists always carry it (fixtures 21, 22)
    metadata["resourceVersion"] = str(server.store.resource_version)
    if _wants_table(call):
        table = _table(call, [render(target.info, e.decode()) for e in selected],
                       resource_version=metadata["resourceVersion"], continue_token=metadata.get("continue", ""))
        if table is not None:
            return table
    # Assembled from the stored JSON: no decoding or re-encoding of 100,000 objects.
    body = b"".join((
        b'{"apiVersion":', orjson.dumps(target.info.group_version), b',"items":[',
        b",".join(raw(server, target.info, entry) for entry in selected),
        b'],"kind":', orjson.dumps(target.info.effective_list_kind), b',"metadata":', orjson.dumps(metadata), b"}",
    ))
    return bytes_response(body, warnings=call.warnings)


def raw(server: ApiServer, info: ResourceInfo, entry: Entry) -> bytes:
    """An entry's JSON as ``info``'s version shows it (re-encoded only for a non-storage version)."""
    storage = server.storage_info(info.group, info.plural)
    if storage is None or storage.version == info.version:
        return entry.raw
    return orjson.dumps(render(info, entry.decode()))


async def watch(server: ApiServer, call: Call) -> web.StreamResponse:
    target, query = call.target, call.query
    matcher = call.matcher()
    if target.name:
        matcher = combine(matcher, field_matcher(f"metadata.name={target.name}"))
    rv_param = query.get("resourceVersion", "")
    since = None if rv_param in ("", "0") else int_param(query, "resourceVersion")
    timeout = int_param(query, "timeoutSeconds")
    bookmarks = query.get("allowWatchBookmarks") in GO_TRUE
    namespace = target.namespace if target.info.namespaced and target.namespace else None
    response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
    await response.prepare(call.request)
    try:
        watcher, initial = server.store.watch(target.gr, namespace, since)
    except TooOld as too_old:
        error = expired(rv_param, too_old.oldest_retained)
        await response.write(orjson.dumps({"type": "ERROR", "object": error.to_status()}) + b"\n")
        return response
    task = asyncio.current_task()
    if task is not None:
        server.streams.add(task)
    try:
        await _stream_events(server, response, call, watcher, initial, matcher, timeout, bookmarks)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        server.store.unwatch(watcher)
        if task is not None:
            server.streams.discard(task)
    return response


async def _stream_events(server: ApiServer, response: web.StreamResponse, call: Call, watcher: Watcher,
                         initial: list[StoreEvent], matcher: Matcher | None, timeout_seconds: int | None,
                         bookmarks: bool) -> None:
    info = call.target.info
    encode = _event_encoder(server, call)
    # Initial events go out in large writes: one write per event took seconds for 100,000 objects.
    batch: list[bytes] = []
    for event in initial:
        event_type = _visible_type(event, matcher)
        if event_type is not None:
            batch.append(encode(event, event_type))
        if len(batch) >= 1000:
            await response.write(b"".join(batch))
            batch = []
    if batch:
        await response.write(b"".join(batch))
    if bookmarks and call.query.get("sendInitialEvents") == "true":
        await _send_bookmark(server.store, response, info, initial_events_end=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_seconds if timeout_seconds else None
    while True:
        wait = server.bookmark_interval if bookmarks else None
        if deadline is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wait = min(wait, remaining) if wait is not None else remaining
        try:
            change = await asyncio.wait_for(watcher.queue.get(), wait)
        except TimeoutError:
            if bookmarks:
                await _send_bookmark(server.store, response, info)
            continue
        if change is None:
            return
        event_type = _visible_type(change, matcher)
        if event_type is not None:
            await response.write(encode(change, event_type))


def _event_encoder(server: ApiServer, call: Call) -> Callable[[StoreEvent, str], bytes]:
    """How this watch writes one event: the stored JSON, or a one-row Table for ``kubectl get -w``."""
    info = call.target.info
    if not _wants_table(call) or tables.columns_of(info) is None:
        def plain(event: StoreEvent, event_type: str) -> bytes:
            return b'{"type":"' + event_type.encode() + b'","object":' + raw(server, info, event.entry) + b"}\n"
        return plain
    first = [True]

    def as_table(event: StoreEvent, event_type: str) -> bytes:
        table = tables.table(info, [render(info, event.entry.decode())],
                             include_object=call.query.get("includeObject", "Metadata"))
        assert table is not None  # columns_of(info) was checked above
        if not first[0]:
            table["columnDefinitions"] = []  # kube-apiserver sends the columns with the first event only
        first[0] = False
        return orjson.dumps({"type": event_type, "object": table}) + b"\n"
    return as_table


async def _send_bookmark(store: Store, response: web.StreamResponse, info: ResourceInfo,
                         initial_events_end: bool = False) -> None:
    metadata: dict[str, Any] = {"resourceVersion": str(store.resource_version)}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    bookmark = {"kind": info.kind, "apiVersion": info.group_version, "metadata": metadata}
    await response.write(orjson.dumps({"type": "BOOKMARK", "object": bookmark}) + b"\n")


def _visible_type(event: StoreEvent, matcher: Matcher | None) -> str | None:
    """The event type a selective watch shows, or None when it does not see the change."""
    if matcher is None:
        return event.type
    matches_now = matcher(event.entry.head)
    if event.type == MODIFIED and event.previous is not None and matcher(event.previous) != matches_now:
        # As the watch cache does: an object entering the selection is ADDED, one leaving it DELETED.
        return ADDED if matches_now else DELETED
    return event.type if matches_now else None
