"""The validating webhook's msgspec route allows a body only if the ordinary route allows it alike.

msgspec skips the fields it does not need; the ordinary route (orjson, then the codec's checks,
then the rules) reads everything. A body the ordinary route refuses with a 400, or whose VM it
denies or warns about, must never be allowed by the fast route, so these tests damage real review
bodies byte by byte and require that whatever the route allows, the ordinary route allows with the
same uid and no warning.
"""

from __future__ import annotations

import json

import aiohttp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nichotplug.rules.cluster import StaticCluster
from nichotplug.service import build_webhook_app
from nichotplug.webhook.codec import BadReview, decode_review
from nichotplug.webhook.engine import review
from nichotplug.webhook.fastdecode import allowed_create
from nichotplug.webhook.registration import VALIDATION_PATH

from .webhook_support import FIXTURES, ServeFn, admission_review, vm

# Real CREATE reviews recorded from kube-apiserver.
BODIES = [path.read_bytes() for path in sorted(FIXTURES.glob("*-validate-CREATE-virtualmachines-*.json"))]
BYTES = st.sampled_from([*b'{}[]":,0123456789eE+-.\\ nultrfas', 0x00, 0x01, 0x7F, 0xC3, 0xFF])


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(BODIES)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(body) - 1))
        edit = draw(st.sampled_from(["replace", "delete", "insert"]))
        if edit == "replace":
            body[at] = draw(BYTES)
        elif edit == "delete":
            del body[at]
        else:
            body[at:at] = bytes([draw(BYTES)])
    return bytes(body)


EMPTY = StaticCluster()


def test_every_recorded_create_takes_the_route() -> None:
    """Real API server bodies are what the route is for (this fails if a change loses them)."""
    assert BODIES
    for body in BODIES:
        uid = allowed_create(body, EMPTY)
        assert uid is not None
        assert uid == decode_review(body)["uid"]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_what_the_route_allows_the_ordinary_route_allows(body: bytes) -> None:
    uid = allowed_create(body, EMPTY)
    event("route: " + ("allowed" if uid is not None else "passed on"))
    if uid is None:
        return
    try:
        request = decode_review(body)
    except BadReview as error:
        raise AssertionError(f"the route allowed a body the codec refuses ({error.message})") from None
    assert request["uid"] == uid
    verdict = review("validation", request, EMPTY)
    assert (verdict.response["allowed"], verdict.reason, verdict.response.get("warnings")) == (True, "allowed", None)


async def test_the_route_answers_as_the_ordinary_route(serve_tls: ServeFn) -> None:
    """Over real TLS: an allowed CREATE; the same with a number beyond a double's range in a field
    nobody reads (read by both routes, as a Go webhook reads it); the same with bytes that are not
    UTF-8 there (refused by both); a collision."""
    cluster = StaticCluster(vms=[vm("other", ("02:00:00:00:00:aa",))])
    server = await serve_tls(build_webhook_app(cluster))
    url = f"https://127.0.0.1:{server.port}{VALIDATION_PATH}"
    allowed = json.dumps(admission_review(vm(macs=("02:00:00:00:00:01",)), uid="uid-1")).encode()
    huge = allowed.replace(b'"oldObject": null', b'"oldObject": null, "x": [1e400, -1e400, 1' + b"0" * 400 + b"]")
    not_utf8 = allowed.replace(b'"oldObject": null', b'"oldObject": null, "x": "' + bytes([0xFF]) + b'"')
    taken = json.dumps(admission_review(vm(macs=("02:00:00:00:00:aa",)), uid="uid-2")).encode()
    assert allowed_create(allowed, cluster) == allowed_create(huge, cluster) == "uid-1"
    assert allowed_create(not_utf8, cluster) is None
    assert decode_review(huge)["uid"] == "uid-1"
    answers = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        for body in (allowed, huge, not_utf8, taken):
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                answers.append((response.status, await response.json()))
    allowed_answer = (200, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "response": {"uid": "uid-1", "allowed": True}})
    assert answers[0] == answers[1] == allowed_answer
    assert answers[2][0] == 400
    assert "not valid JSON" in answers[2][1]["message"]
    assert answers[3][0] == 200
    assert answers[3][1]["response"]["status"]["code"] == 409
