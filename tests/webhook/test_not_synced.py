"""Nothing is judged against a half-read cluster.

Before the cluster view's first list completes, the MAC index is incomplete and VMIs are missing:
judging then would allow a MAC another VM already owns. A judged request waits briefly for the
sync; if it does not come, validation refuses with 503 ("try again") and mutation adds nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from nichotplug.rules.cluster import StaticCluster
from nichotplug.webhook.http import add_webhook_routes, go_duration_seconds
from nichotplug.webhook.registration import MUTATION_PATH, VALIDATION_PATH

from .webhook_support import admission_review, vm

TAKEN = "02:00:00:00:00:01"


@pytest.fixture
def synced() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def client(aiohttp_client: Any, synced: asyncio.Event) -> TestClient[Any, Any]:
    app = web.Application()
    cluster = StaticCluster(vms=[vm("owner", macs=(TAKEN,))])
    add_webhook_routes(app, cluster, synced, sync_wait_seconds=0.3)
    test_client: TestClient[Any, Any] = await aiohttp_client(app)
    return test_client


async def answer(client: TestClient[Any, Any], path: str, review: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=review)
    assert response.status == 200
    body: dict[str, Any] = (await response.json())["response"]
    return body


async def test_validation_before_sync_refuses_with_503_instead_of_allowing_a_taken_mac(
        client: TestClient[Any, Any]) -> None:
    body = await answer(client, VALIDATION_PATH, admission_review(vm("copycat", macs=(TAKEN,))))

    assert body["allowed"] is False
    assert body["status"]["code"] == 503
    assert "has not finished reading the cluster" in body["status"]["message"]


async def test_a_request_waiting_for_the_sync_is_judged_once_it_completes(
        client: TestClient[Any, Any], synced: asyncio.Event) -> None:
    asyncio.get_running_loop().call_later(0.1, synced.set)

    body = await answer(client, VALIDATION_PATH, admission_review(vm("copycat", macs=(TAKEN,))))

    assert body["allowed"] is False
    assert body["status"]["code"] == 409  # the collision, judged against the complete view


async def test_mutation_before_sync_adds_nothing(client: TestClient[Any, Any]) -> None:
    body = await answer(client, MUTATION_PATH, admission_review(vm("fresh", macs=(None,))))

    assert body["allowed"] is True
    assert "patch" not in body


async def test_requests_that_are_not_judged_do_not_wait_for_the_sync(client: TestClient[Any, Any]) -> None:
    review = admission_review(None, operation="DELETE", oldObject=vm("gone"))

    body = await answer(client, VALIDATION_PATH, review)

    assert body["allowed"] is True


async def test_after_sync_requests_are_judged_at_once(client: TestClient[Any, Any], synced: asyncio.Event) -> None:
    synced.set()

    body = await answer(client, MUTATION_PATH, admission_review(vm("fresh", macs=(None,))))

    assert body["allowed"] is True
    assert body["patchType"] == "JSONPatch"


# -- the API server's deadline ------------------------------------------------------------------------


@pytest.fixture
async def patient_client(aiohttp_client: Any, synced: asyncio.Event) -> TestClient[Any, Any]:
    """A webhook that would wait up to 5 s for the sync, the view completing after 1 s."""
    app = web.Application()
    add_webhook_routes(app, StaticCluster(vms=[vm("owner", macs=(TAKEN,))]), synced, sync_wait_seconds=5.0)
    asyncio.get_running_loop().call_later(1.0, synced.set)
    test_client: TestClient[Any, Any] = await aiohttp_client(app)
    return test_client


@pytest.mark.parametrize("deadline", ["1s", "1000ms", "0.4s"])
async def test_the_wait_ends_before_the_deadline_the_api_server_puts_in_the_url(
        patient_client: TestClient[Any, Any], deadline: str) -> None:
    # The API server stops reading at its deadline; our 503 must reach it before that, or the user sees
    # "context deadline exceeded" (validation) or a VM without MACs (mutation's failure policy Ignore).
    review = admission_review(vm("copycat", macs=(TAKEN,)))
    body = await answer(patient_client, f"{VALIDATION_PATH}?timeout={deadline}", review)
    assert (body["allowed"], body["status"]["code"]) == (False, 503)


async def test_a_deadline_beyond_the_sync_still_gets_the_judgement(patient_client: TestClient[Any, Any]) -> None:
    review = admission_review(vm("copycat", macs=(TAKEN,)))
    body = await answer(patient_client, f"{VALIDATION_PATH}?timeout=10s", review)
    assert (body["allowed"], body["status"]["code"]) == (False, 409)


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0), ("1m30s", 90.0), ("500ms", 0.5), ("1.5s", 1.5), ("1h0m0s", 3600.0), ("0s", 0.0),
    ("250µs", 0.00025), ("3us", 3e-6), (".5s", 0.5),
    ("", None), ("10", None), ("s", None), ("10 s", None), ("-1s", None), ("1e3s", None), ("10sx", None),
    ("10S", None),
])
def test_go_durations_are_read_like_go_reads_them(text: str, seconds: float | None) -> None:
    assert go_duration_seconds(text) == (pytest.approx(seconds) if seconds is not None else None)
