"""The TLS port's front door: admission reviews straight to their handlers, the rest as the app answers.

Served as ``serve`` serves it (``start_tls_runner``), over real TLS.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from nichotplug.rules.cluster import StaticCluster
from nichotplug.service import build_webhook_app
from nichotplug.serving import open_front_door
from nichotplug.webhook.codec import encode_allowed, encode_review
from nichotplug.webhook.registration import MUTATION_PATH, VALIDATION_PATH

from .webhook_support import HalfSentBody, Served, ServeFn, admission_review, check_review, vm

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def served(serve_tls: ServeFn) -> Served:
    return await serve_tls(build_webhook_app(StaticCluster(vms=[vm("other", ("02:00:00:00:00:aa",))])))


def url(served: Served, path: str) -> str:
    return f"https://127.0.0.1:{served.port}{path}"


async def test_admission_reviews_are_answered_through_the_door(served: Served,
                                                               session: aiohttp.ClientSession) -> None:
    allowed = admission_review(vm(macs=("02:00:00:00:00:01",)), uid="uid-1")
    taken = admission_review(vm(macs=("02:00:00:00:00:aa",)), uid="uid-2")
    async with session.post(url(served, VALIDATION_PATH), json=allowed) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert check_review(await response.json(), uid="uid-1", webhook="validation")["allowed"] is True
    async with session.post(url(served, VALIDATION_PATH) + "?timeout=10s", json=taken) as response:
        answer = check_review(await response.json(), uid="uid-2", webhook="validation")
        assert answer["status"]["code"] == 409
    async with session.post(url(served, MUTATION_PATH), json=admission_review(vm(), uid="uid-3")) as response:
        assert check_review(await response.json(), uid="uid-3", webhook="mutation")["patchType"] == "JSONPatch"
    # Spelled otherwise (percent-encoded), the path misses the door's table; the app's router answers it.
    encoded = URL(url(served, VALIDATION_PATH.replace("/validation", "/%76alidation")), encoded=True)
    async with session.post(encoded, json=admission_review(vm(), uid="uid-4")) as response:
        assert check_review(await response.json(), uid="uid-4", webhook="validation")["allowed"] is True


async def test_everything_else_is_answered_by_the_application(served: Served,
                                                              session: aiohttp.ClientSession) -> None:
    async with session.get(url(served, VALIDATION_PATH)) as response:
        assert response.status == 405  # the router's answer: the path exists, for POST only
    async with session.post(url(served, "/v1/webhook/other"), data=b"{}", headers=JSON) as response:
        assert response.status == 404
    async with session.get(url(served, "/healthz")) as response:
        assert (response.status, await response.text()) == (200, "ok")
    async with session.post(url(served, "/healthz")) as response:
        assert response.status == 405
    assert served.door.in_flight == 0


async def test_a_request_whose_body_is_still_arriving_is_in_flight(served: Served,
                                                                    session: aiohttp.ClientSession) -> None:
    """What the drain on shutdown waits for: counted from its headers until its answer is sent, for
    each wait anew (a later wait is not answered by an earlier idle moment)."""

    async def post_held(body: HalfSentBody) -> int:
        async with session.post(url(served, VALIDATION_PATH), data=body.chunks(), headers=JSON) as response:
            return response.status

    for uid in ("uid-slow", "uid-slow-again"):
        body = HalfSentBody(json.dumps(admission_review(vm(macs=("02:00:00:00:00:01",)), uid=uid)).encode())
        posting = asyncio.create_task(post_held(body))
        await body.first_part_sent.wait()
        for _ in range(100):  # until the server has read the headers and called the door
            if served.door.in_flight:
                break
            await asyncio.sleep(0.01)
        assert served.door.in_flight == 1
        assert await served.door.wait_idle(0.1) is False
        body.release()
        assert await served.door.wait_idle(5) is True
        assert await posting == 200
        assert served.door.in_flight == 0


async def test_the_door_needs_a_set_up_runner() -> None:
    runner = web.AppRunner(build_webhook_app(StaticCluster()))
    with pytest.raises(RuntimeError, match=r"call runner\.setup\(\) first"):
        open_front_door(runner)


@given(st.text())
def test_the_allowed_answer_is_the_general_encoding(uid: str) -> None:
    assert encode_allowed(uid) == encode_review({"uid": uid, "allowed": True})
