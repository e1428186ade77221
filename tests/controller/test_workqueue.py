"""The work queue: deduplication, re-queue while processing, capped per-key backoff, shutdown."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from nichotplug.controller.workqueue import ShutDown, WorkQueue


async def test_a_key_added_twice_before_processing_is_handed_out_once() -> None:
    queue = WorkQueue("t-dedup")
    queue.add("ns/a")
    queue.add("ns/b")
    queue.add("ns/a")
    assert REGISTRY.get_sample_value("nichotplug_workqueue_depth", {"name": "t-dedup"}) == 2
    assert [await queue.get(), await queue.get()] == ["ns/a", "ns/b"]
    assert len(queue) == 0
    assert REGISTRY.get_sample_value("nichotplug_workqueue_depth", {"name": "t-dedup"}) == 0


async def test_a_key_re_added_while_processing_waits_then_comes_back_once() -> None:
    queue = WorkQueue("t-reprocess")
    queue.add("ns/a")
    key = await queue.get()
    queue.add("ns/a")
    queue.add("ns/a")
    assert len(queue) == 0  # not handed to a second worker while the first still works on it
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == "ns/a"
    queue.done("ns/a")
    assert len(queue) == 0


async def test_backoff_doubles_per_failure_is_capped_and_forget_resets_it() -> None:
    queue = WorkQueue("t-backoff", base_delay=0.01, max_delay=0.05)
    delays = [queue.add_rate_limited("ns/a") for _ in range(5)]
    assert delays == [0.01, 0.02, 0.04, 0.05, 0.05]
    assert REGISTRY.get_sample_value("nichotplug_workqueue_retries_total", {"name": "t-backoff"}) == 5
    assert queue.failures("ns/a") == 5
    queue.forget("ns/a")
    assert queue.add_rate_limited("ns/a") == 0.01


async def test_a_delayed_key_arrives_once_even_with_several_timers() -> None:
    queue = WorkQueue("t-after")
    queue.add_after("ns/a", 0.02)
    queue.add_after("ns/a", 0.01)
    queue.add_after("ns/a", 0.5)
    assert len(queue) == 0
    assert await asyncio.wait_for(queue.get(), 2) == "ns/a"
    queue.done("ns/a")
    await asyncio.sleep(0.05)
    assert len(queue) == 0


async def test_waiting_workers_each_get_a_different_key() -> None:
    queue = WorkQueue("t-workers")
    getters = [asyncio.create_task(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for key in ("ns/a", "ns/b", "ns/c"):
        queue.add(key)
    assert sorted(await asyncio.gather(*getters)) == ["ns/a", "ns/b", "ns/c"]


async def test_shutdown_wakes_waiters_and_refuses_new_keys() -> None:
    queue = WorkQueue("t-shutdown")
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.add_after("ns/late", 0.01)
    queue.shut_down()
    with pytest.raises(ShutDown):
        await getter
    queue.add("ns/a")
    await asyncio.sleep(0.03)
    assert len(queue) == 0


async def test_a_cancelled_waiter_passes_its_wake_up_on() -> None:
    queue = WorkQueue("t-cancel")
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.add("ns/a")
    first.cancel()
    assert await asyncio.wait_for(second, 2) == "ns/a"


async def test_a_controller_without_workers_is_refused(api_client: object) -> None:
    from nichotplug.controller import MacController
    from nichotplug.kube.cache import ClusterView

    with pytest.raises(ValueError, match="at least one worker"):
        MacController(api_client, ClusterView(), workers=0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "parts"), [("ns/a", ("ns", "a")), (("ns", "a"), ("ns", "a"))])
def test_keys_split_into_namespace_and_name(key: object, parts: tuple[str, str]) -> None:
    from nichotplug.controller.reconciler import split_key

    assert split_key(key) == parts


def test_a_key_that_is_not_a_key_is_refused_clearly() -> None:
    from nichotplug.controller.reconciler import split_key

    with pytest.raises(ValueError, match="not a namespace/name key"):
        split_key(["ns", "a", "b"])
