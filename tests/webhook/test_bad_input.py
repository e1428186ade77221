"""Unusable webhook calls get a clear 4xx; a crashing rule never becomes an allow on validation."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from nichotplug.rules.cluster import StaticCluster
from nichotplug.webhook.codec import MAX_BODY_BYTES
from nichotplug.webhook.http import MUTATION_PATH, VALIDATION_PATH

from .webhook_support import ExplodingCluster, ServeFn, admission_review, check_review, vm

PATHS = {"mutation": MUTATION_PATH, "validation": VALIDATION_PATH}


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def base_url(serve_tls: ServeFn) -> str:
    from nichotplug.service import build_webhook_app

    server = await serve_tls(build_webhook_app(StaticCluster(vms=[vm("other", ("02:00:00:00:00:aa",))])))
    return f"https://127.0.0.1:{server.port}"


@pytest.fixture
async def exploding_url(serve_tls: ServeFn) -> str:
    from nichotplug.service import build_webhook_app

    server = await serve_tls(build_webhook_app(ExplodingCluster()))
    return f"https://127.0.0.1:{server.port}"


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    async with session.post(url, data=body, headers={"Content-Type": content_type}) as response:
        return response.status, await response.json(content_type=None)


def good_body() -> bytes:
    return json.dumps(admission_review(vm())).encode()


BAD_CALLS: list[tuple[str, bytes, str, int, str, str]] = [
    # (id, body, content type, HTTP status, metric reason, words the message must contain)
    ("not-json", b"{not json", "application/json", 400, "malformed-json", "not valid JSON"),
    # What orjson refuses besides a number's size stays refused, with orjson's words (codec._loads):
    ("nan", good_body().replace(b'"oldObject": null', b'"oldObject": null, "x": NaN'), "application/json",
     400, "malformed-json", "not valid JSON"),
    ("lone-surrogate", good_body().replace(b'"oldObject": null', b'"oldObject": null, "x": "\\ud800"'),
     "application/json", 400, "malformed-json", "not valid JSON"),
    # A number beyond a double is no fault (codec._loads): the message names the fault after it.
    ("huge-number-and-lone-surrogate",
     good_body().replace(b'"oldObject": null', b'"oldObject": null, "x": [1e400, "\\udc00"]'),
     "application/json", 400, "malformed-json", "not valid JSON: 'utf-8' codec can't encode character '\\udc00'"),
    ("huge-number-then-missing-value",
     good_body().replace(b'"oldObject": null', b'"oldObject": null, "x": [1' + b"0" * 400 + b', ]'),
     "application/json", 400, "malformed-json", "not valid JSON: Expecting value"),
    ("not-utf8", good_body().replace(b'"oldObject": null', b'"oldObject": null, "x": "\xff"'), "application/json",
     400, "malformed-json", "not valid JSON"),
    ("empty", b"", "application/json", 400, "empty-body", "empty request body"),
    ("array", b"[1, 2]", "application/json", 400, "not-a-review", "got JSON array"),
    ("wrong-kind", json.dumps({"apiVersion": "v1", "kind": "Pod", "request": {}}).encode(), "application/json",
     400, "not-a-review", "expected apiVersion 'admission.k8s.io/v1'"),
    ("no-request", json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(),
     "application/json", 400, "missing-field", "no request"),
    ("no-uid", json.dumps(admission_review(vm(), uid="")).encode(), "application/json",
     400, "missing-field", "request.uid"),
    ("bad-operation", json.dumps(admission_review(vm(), operation="PATCH")).encode(), "application/json",
     400, "bad-field", "'PATCH' is not one of"),
    ("object-not-object", json.dumps(admission_review([1])).encode(), "application/json",
     400, "bad-field", "request.object must be an object"),
    ("dry-run-not-bool", json.dumps(admission_review(vm(), dryRun="yes")).encode(), "application/json",
     400, "bad-field", "request.dryRun"),
    ("no-resource", json.dumps(admission_review(vm(), resource="vms")).encode(), "application/json",
     400, "missing-field", "request.resource"),
    ("text-plain", good_body(), "text/plain", 415, "content-type", "Content-Type must be application/json"),
    ("yaml", good_body(), "application/yaml", 415, "content-type", "got 'application/yaml'"),
]


@pytest.mark.parametrize("webhook", ["mutation", "validation"])
@pytest.mark.parametrize(("body", "content_type", "status", "reason", "words"),
                         [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS])
async def test_unusable_call_gets_a_clear_4xx_status(
    base_url: str, session: aiohttp.ClientSession, webhook: str,
    body: bytes, content_type: str, status: int, reason: str, words: str,
) -> None:
    bad_before = sample("nichotplug_webhook_bad_requests_total", {"webhook": webhook, "reason": reason})
    code_before = sample("nichotplug_webhook_requests_total", {"webhook": webhook, "code": str(status)})
    decisions_before = _all_decisions(webhook)
    answered, answer = await post(session, base_url + PATHS[webhook], body, content_type)
    assert answered == status
    # A metav1.Status: the API server's client decodes it and shows the message.
    assert answer["kind"] == "Status"
    assert answer["code"] == status
    assert words in answer["message"]
    assert sample("nichotplug_webhook_bad_requests_total", {"webhook": webhook, "reason": reason}) == bad_before + 1
    assert sample("nichotplug_webhook_requests_total", {"webhook": webhook, "code": str(status)}) == code_before + 1
    assert _all_decisions(webhook) == decisions_before, "an unusable call must not count as a decision"


def _all_decisions(webhook: str) -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "nichotplug_admission_decisions":
            total += sum(
                sample.value for sample in metric.samples
                if sample.name.endswith("_total") and sample.labels["webhook"] == webhook
            )
    return total


@pytest.mark.parametrize("webhook", ["mutation", "validation"])
async def test_body_over_8_mib_is_413_with_or_without_content_length(
    base_url: str, session: aiohttp.ClientSession, webhook: str
) -> None:
    review = admission_review(vm())
    review["request"]["padding"] = "x" * MAX_BODY_BYTES
    body = json.dumps(review).encode()
    status, answer = await post(session, base_url + PATHS[webhook], body)
    assert status == 413
    assert "larger than 8388608 bytes" in answer["message"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the server must stop reading by itself
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    async with session.post(base_url + PATHS[webhook], data=chunks(),
                            headers={"Content-Type": "application/json"}) as response:
        assert response.status == 413
        assert "larger than" in (await response.json(content_type=None))["message"]


async def test_a_body_just_under_the_limit_is_judged(base_url: str, session: aiohttp.ClientSession) -> None:
    review = admission_review(vm(macs=("02:00:00:00:00:01",)))
    review["request"]["object"]["metadata"]["annotations"] = {"note": ""}
    filler = MAX_BODY_BYTES - len(json.dumps(review)) - 16
    review["request"]["object"]["metadata"]["annotations"]["note"] = "x" * filler
    body = json.dumps(review).encode()
    assert len(body) <= MAX_BODY_BYTES
    status, answer = await post(session, base_url + VALIDATION_PATH, body)
    assert status == 200
    assert check_review(answer, uid="uid-1", webhook="validation")["allowed"] is True


async def test_content_type_with_charset_is_accepted(base_url: str, session: aiohttp.ClientSession) -> None:
    status, answer = await post(session, base_url + VALIDATION_PATH, good_body(), "application/json; charset=utf-8")
    assert status == 200
    assert check_review(answer, uid="uid-1", webhook="validation")["allowed"] is True


async def test_unreadable_vm_is_denied_by_validation_and_left_alone_by_mutation(
    base_url: str, session: aiohttp.ClientSession
) -> None:
    broken = vm()
    broken["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = "not a list"
    body = json.dumps(admission_review(broken)).encode()
    status, answer = await post(session, base_url + VALIDATION_PATH, body)
    assert status == 200
    response = check_review(answer, uid="uid-1", webhook="validation")
    assert response["allowed"] is False
    assert response["status"]["code"] == 403  # a rule refusing the object: kubectl shows the message
    assert "interfaces" in response["status"]["message"]
    status, answer = await post(session, base_url + MUTATION_PATH, body)
    assert status == 200
    assert check_review(answer, uid="uid-1", webhook="mutation") == {"uid": "uid-1", "allowed": True}


async def test_collision_is_denied_409_and_mutation_patches_only_what_is_missing(
    base_url: str, session: aiohttp.ClientSession
) -> None:
    body = json.dumps(admission_review(vm(macs=("02-00-00-00-00-AA", None)))).encode()
    _, answer = await post(session, base_url + VALIDATION_PATH, body)
    response = check_review(answer, uid="uid-1", webhook="validation")
    assert response["allowed"] is False
    assert response["status"]["code"] == 409
    # Not reason Conflict: client-go's IsConflict would read a stale resourceVersion and retry the write.
    assert response["status"]["reason"] == "Forbidden"
    assert "default/other" in response["status"]["message"]
    _, answer = await post(session, base_url + MUTATION_PATH, body)
    ops = json.loads(base64.b64decode(check_review(answer, uid="uid-1", webhook="mutation")["patch"]))
    assert [op["path"] for op in ops] == ["/spec/template/spec/domain/devices/interfaces/1/macAddress"]


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT"])
async def test_other_operations_are_allowed_untouched(
    base_url: str, session: aiohttp.ClientSession, operation: str
) -> None:
    body = json.dumps(admission_review(None, operation=operation, oldObject=vm())).encode()
    for path in (MUTATION_PATH, VALIDATION_PATH):
        status, answer = await post(session, base_url + path, body)
        assert status == 200
        assert answer["response"] == {"uid": "uid-1", "allowed": True}


async def test_validation_rule_crash_is_a_500_denial_logged_and_counted(
    exploding_url: str, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    errors_before = sample("nichotplug_webhook_rule_errors_total", {"webhook": "validation"})
    body = json.dumps(admission_review(vm(macs=("02:00:00:00:00:01",)))).encode()
    status, answer = await post(session, exploding_url + VALIDATION_PATH, body)
    assert status == 200
    response = check_review(answer, uid="uid-1", webhook="validation")
    assert response["allowed"] is False
    assert response["status"]["code"] == 500
    assert "internal error" in response["status"]["message"]
    assert sample("nichotplug_webhook_rule_errors_total", {"webhook": "validation"}) == errors_before + 1
    assert "validation rule crashed; request uid-1 denied" in caplog.text
    assert "cluster view exploded" in caplog.text  # the traceback is in the log, for whoever fixes it


async def test_mutation_rule_crash_allows_without_patch_logged_and_counted(
    exploding_url: str, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    errors_before = sample("nichotplug_webhook_rule_errors_total", {"webhook": "mutation"})
    decisions_before = sample("nichotplug_admission_decisions_total", {
        "webhook": "mutation", "operation": "CREATE", "result": "error", "reason": "internal-error"})
    status, answer = await post(session, exploding_url + MUTATION_PATH, good_body())
    assert status == 200
    assert check_review(answer, uid="uid-1", webhook="mutation") == {"uid": "uid-1", "allowed": True}
    assert sample("nichotplug_webhook_rule_errors_total", {"webhook": "mutation"}) == errors_before + 1
    assert sample("nichotplug_admission_decisions_total", {
        "webhook": "mutation", "operation": "CREATE", "result": "error", "reason": "internal-error"},
    ) == decisions_before + 1
    assert "mutation rule crashed" in caplog.text


async def test_get_on_a_webhook_path_is_405(base_url: str, session: aiohttp.ClientSession) -> None:
    async with session.get(base_url + VALIDATION_PATH) as response:
        assert response.status == 405


async def test_every_decision_is_logged_with_object_namespace_name_user_and_uid(
    base_url: str, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nichotplug.webhook")
    allowed = json.dumps(admission_review(vm(macs=("02:00:00:00:00:01",)), uid="uid-allowed")).encode()
    denied = json.dumps(admission_review(vm(macs=("02:00:00:00:00:aa",)), uid="uid-denied")).encode()
    for body in (allowed, denied):
        status, _ = await post(session, base_url + VALIDATION_PATH, body)
        assert status == 200
    records = {record.admission_uid: record for record in caplog.records if hasattr(record, "admission_uid")}
    assert set(records) == {"uid-allowed", "uid-denied"}
    for record in records.values():
        assert (record.admission_object, record.admission_namespace, record.admission_name, record.admission_user) \
            == ("VirtualMachine", "default", "vm1", "alice")
    assert records["uid-allowed"].levelno == logging.DEBUG
    assert records["uid-denied"].levelno == logging.INFO
    assert "validation CREATE VirtualMachine default/vm1 by alice (uid uid-denied): denied (mac-collision): 409" \
        in records["uid-denied"].getMessage()
