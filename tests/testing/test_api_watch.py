"""Watches: initial state, resume from a resourceVersion, 410 for a too-old one, bookmarks,
timeouts, selectors, and what a restart does to an open watch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client, watch

from nichotplug.testing import ApiServer

from .api_support import MERGE, VMS, RawClient, vm

KV = ("kubevirt.io", "v1")
ALL_VMS = "/apis/kubevirt.io/v1/virtualmachines"



async def _collect(stream: AsyncIterator[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    events = []
    async for event in stream:
        events.append(event)
        if len(events) == count:
            break
    return events


async def test_watch_without_version_starts_with_current_objects_then_changes(api_client: Any) -> None:
    custom = client.CustomObjectsApi(api_client)
    await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    seen: list[tuple[str, str]] = []
    watcher = watch.Watch()

    async def changes() -> None:
        await asyncio.sleep(0.05)
        await custom.patch_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1",
                                                    {"spec": {"runStrategy": "Always"}}, _content_type=MERGE)
        await custom.delete_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")

    writer = asyncio.create_task(changes())
    async for event in watcher.stream(custom.list_namespaced_custom_object, *KV, "default", "virtualmachines",
                                      timeout_seconds=10):
        seen.append((event["type"], event["object"]["spec"]["runStrategy"]))
        if event["type"] == "DELETED":
            watcher.stop()
    await writer
    await watcher.close()
    assert seen == [("ADDED", "Halted"), ("MODIFIED", "Always"), ("DELETED", "Always")]


async def test_watch_from_a_list_version_sends_only_later_events(raw: RawClient) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    listed = await raw.call("GET", ALL_VMS)
    since = listed.body["metadata"]["resourceVersion"]
    await raw.call("PATCH", f"{VMS}/vm1", {"spec": {"runStrategy": "Always"}}, content_type=MERGE)
    await raw.call("DELETE", f"{VMS}/vm1")
    events = await _collect(raw.stream(f"{ALL_VMS}?watch=true&allowWatchBookmarks=true&resourceVersion={since}"), 2)
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert int(since) < versions[0] < versions[1]


async def test_too_old_version_is_an_error_event_with_410() -> None:
    server = ApiServer(watch_history=3)
    async with server:
        raw = RawClient(server)
        try:
            for index in range(6):
                await raw.call("POST", VMS, vm(f"vm{index}"))
            events = [e async for e in raw.stream(f"{ALL_VMS}?watch=true&resourceVersion=1")]
        finally:
            await raw.close()
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["code"], status["reason"]) == (410, "Expired")
    assert status["message"].startswith("too old resource version: 1 (")


async def test_timeout_seconds_ends_the_stream(raw: RawClient) -> None:
    events = [e async for e in raw.stream(f"{ALL_VMS}?watch=true&timeoutSeconds=1")]
    assert events == []


async def test_bookmarks_carry_the_current_resource_version(raw: RawClient, apiserver: ApiServer) -> None:
    apiserver.bookmark_interval = 0.05
    await raw.call("POST", VMS, vm("vm1"))
    rv = apiserver.store.resource_version
    events = await _collect(raw.stream(f"{ALL_VMS}?watch=true&allowWatchBookmarks=true&resourceVersion={rv}"), 1)
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["object"]["metadata"]["resourceVersion"] == str(rv)
    assert events[0]["object"]["kind"] == "VirtualMachine"


async def test_send_initial_events_ends_with_a_marked_bookmark(raw: RawClient) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    path = f"{ALL_VMS}?watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
    events = await _collect(raw.stream(path), 2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


async def test_namespace_and_label_selector_filter_events(raw: RawClient) -> None:
    await raw.call("POST", "/api/v1/namespaces", {"metadata": {"name": "other"}})
    collecting = asyncio.create_task(_collect(raw.stream(f"{VMS}?watch=true&labelSelector=team%3Dred"), 1))
    await asyncio.sleep(0.05)
    await raw.call("POST", "/apis/kubevirt.io/v1/namespaces/other/virtualmachines", vm("x", "other",
                                                                                       labels={"team": "red"}))
    await raw.call("POST", VMS, vm("blue", labels={"team": "blue"}))
    await raw.call("POST", VMS, vm("red", labels={"team": "red"}))
    events = await asyncio.wait_for(collecting, 10)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "red")]


async def test_restart_cuts_open_watches_and_keeps_data(raw: RawClient, apiserver: ApiServer) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    port = apiserver.port
    rv = str(apiserver.store.resource_version)
    ended = asyncio.Event()

    async def watch_until_cut() -> list[dict[str, Any]]:
        events = [e async for e in raw.stream(f"{ALL_VMS}?watch=true&resourceVersion={rv}")]
        ended.set()
        return events

    watching = asyncio.create_task(watch_until_cut())
    await asyncio.sleep(0.05)
    await apiserver.restart()
    assert await asyncio.wait_for(watching, 10) == []
    assert apiserver.port == port
    patched = await raw.call("PATCH", f"{VMS}/vm1", {"spec": {"runStrategy": "Always"}}, content_type=MERGE)
    assert patched.body["spec"]["runStrategy"] == "Always"  # the data survived the restart
    # As on a real kube-apiserver (checked on v1.36): its watch caches start after the restart, so a
    # watch resumed from a resourceVersion read before it is told to list again.
    resumed = await _collect(raw.stream(f"{ALL_VMS}?watch=true&resourceVersion={rv}"), 1)
    assert resumed[0]["type"] == "ERROR"
    assert (resumed[0]["object"]["reason"], resumed[0]["object"]["code"]) == ("Expired", 410)


async def test_objects_entering_and_leaving_a_label_selection(raw: RawClient) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    rv = raw.server.store.resource_version
    collecting = asyncio.create_task(_collect(raw.stream(f"{VMS}?watch=true&resourceVersion={rv}&labelSelector=on"), 2))
    await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"on": "1"}}}, content_type=MERGE)
    await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"on": "1", "other": "x"}}}, content_type=MERGE)
    await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": None}}, content_type=MERGE)
    events = await asyncio.wait_for(collecting, 10)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED"]
    left = await _collect(raw.stream(f"{VMS}?watch=true&resourceVersion={rv}&labelSelector=on"), 3)
    assert [e["type"] for e in left] == ["ADDED", "MODIFIED", "DELETED"]
    assert "labels" not in left[2]["object"]["metadata"]


async def test_watch_of_one_object_by_name(raw: RawClient) -> None:
    collecting = asyncio.create_task(_collect(raw.stream(f"{VMS}?watch=true&fieldSelector=metadata.name%3Dwanted"), 1))
    await asyncio.sleep(0.05)
    await raw.call("POST", VMS, vm("other"))
    await raw.call("POST", VMS, vm("wanted"))
    events = await asyncio.wait_for(collecting, 10)
    assert events[0]["object"]["metadata"]["name"] == "wanted"


async def test_bad_resource_version_is_bad_request(raw: RawClient) -> None:
    answer = await raw.call("GET", f"{ALL_VMS}?watch=true&resourceVersion=abc")
    assert answer.status == 400
