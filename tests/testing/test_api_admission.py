"""Admission as the API server runs it: webhook configurations stored through the API, called on
create/update/patch/delete in the real order (mutate -> schema validation -> validate -> store)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from nichotplug.testing import ApiServer
from nichotplug.testing.fixtures import SHARED_FIXTURES

from .admission_support import ScriptedWebhook, configuration, tls_bundle, webhook
from .api_support import MERGE, VMS, RawClient, vm

ADMISSIONREGISTRATION = "/apis/admissionregistration.k8s.io/v1"
RECORDED = SHARED_FIXTURES / "apiserver"



@pytest_asyncio.fixture
async def hook() -> AsyncIterator[ScriptedWebhook]:
    server = ScriptedWebhook(tls_bundle())
    await server.start()
    yield server
    await server.stop()


async def _register(raw: RawClient, kind: str, name: str, *webhooks: dict[str, Any]) -> None:
    plural = "mutatingwebhookconfigurations" if kind.startswith("Mutating") else "validatingwebhookconfigurations"
    answer = await raw.call("POST", f"{ADMISSIONREGISTRATION}/{plural}", configuration(kind, name, *webhooks))
    assert answer.status == 201, answer.body


def _recorded(name: str) -> dict[str, Any]:
    recorded: dict[str, Any] = json.loads((RECORDED / f"{name}.json").read_text())["response"]
    return recorded


@pytest.mark.skipif(not RECORDED.is_dir(), reason="recorded fixtures not on this machine")
async def test_denial_is_answered_like_the_recorded_one(raw: RawClient, hook: ScriptedWebhook) -> None:
    expected = _recorded("15-webhook-denied")
    message = expected["body"]["message"].split("denied the request: ", 1)[1]
    await _register(raw, "MutatingWebhookConfiguration", "warn",
                    webhook("mutate.recorder.test", hook.url("warn", text="a warning from the webhook"),
                            hook.ca_bundle))
    await _register(raw, "ValidatingWebhookConfiguration", "deny",
                    webhook("validate.recorder.test", hook.url("deny", code=409, message=message.replace(" ", "%20")),
                            hook.ca_bundle))
    answer = await raw.call("POST", VMS, vm("deny-shape"))
    assert answer.status == expected["status"]
    assert answer.body == expected["body"]
    assert answer.warnings == [expected["headers"]["Warning"]]
    assert (await raw.call("GET", f"{VMS}/deny-shape")).status == 404


@pytest.mark.skipif(not RECORDED.is_dir(), reason="recorded fixtures not on this machine")
async def test_warning_is_a_header_on_the_created_object(raw: RawClient, hook: ScriptedWebhook) -> None:
    expected = _recorded("16-webhook-warning")
    text = "hot-plugging more than 3 interfaces exceeds the hot-plug port budget"
    await _register(raw, "ValidatingWebhookConfiguration", "warn",
                    webhook("validate.recorder.test", hook.url("warn", text=text.replace(" ", "%20")),
                            hook.ca_bundle))
    answer = await raw.call("POST", VMS, vm("warn-shape"))
    assert answer.status == expected["status"] == 201
    assert answer.warnings == [expected["headers"]["Warning"]]


async def test_mutation_is_stored_and_seen_by_validating_webhooks(raw: RawClient, hook: ScriptedWebhook) -> None:
    await _register(raw, "MutatingWebhookConfiguration", "m",
                    webhook("m.nichotplug.test", hook.url("patch", label="mutated", value="yes"), hook.ca_bundle))
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", hook.url("allow"), hook.ca_bundle))
    created = await raw.call("POST", VMS, vm("vm1"))
    assert created.body["metadata"]["labels"] == {"mutated": "yes"}
    (_, validated), = [(path, request) for path, request in hook.calls if path == "/allow"]
    assert validated["object"]["metadata"]["labels"] == {"mutated": "yes"}
    assert validated["operation"] == "CREATE"


async def test_schema_validation_runs_before_validating_webhooks(raw: RawClient, hook: ScriptedWebhook) -> None:
    await _register(raw, "MutatingWebhookConfiguration", "m",
                    webhook("m.nichotplug.test", hook.url("allow/m"), hook.ca_bundle))
    await _register(raw, "ValidatingWebhookConfiguration", "v", webhook("v.nichotplug.test", hook.url("allow/v"),
                                                                          hook.ca_bundle))
    body = vm("bad")
    del body["spec"]["template"]
    answer = await raw.call("POST", VMS, body)
    assert answer.status == 422
    assert hook.called_paths() == ["/allow/m"]


async def test_update_patch_and_delete_are_admitted_with_the_old_object(raw: RawClient, hook: ScriptedWebhook) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", hook.url("allow"), hook.ca_bundle))
    await raw.call("PATCH", f"{VMS}/vm1", {"spec": {"runStrategy": "Always"}}, content_type=MERGE)
    await raw.call("DELETE", f"{VMS}/vm1")
    (_, update), (_, delete) = hook.calls
    assert (update["operation"], update["oldObject"]["spec"]["runStrategy"], update["object"]["spec"]["runStrategy"]) \
        == ("UPDATE", "Halted", "Always")
    assert (delete["operation"], delete["object"], delete["oldObject"]["metadata"]["name"]) == ("DELETE", None, "vm1")


async def test_denied_delete_keeps_the_object(raw: RawClient, hook: ScriptedWebhook) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", hook.url("deny", code=403, message="no"), hook.ca_bundle,
                            operations=("DELETE",)))
    answer = await raw.call("DELETE", f"{VMS}/vm1")
    assert answer.status == 403
    assert answer.body["message"] == 'admission webhook "v.nichotplug.test" denied the request: no'
    assert (await raw.call("GET", f"{VMS}/vm1")).status == 200


async def test_status_writes_are_admitted_as_the_status_subresource(raw: RawClient, hook: ScriptedWebhook) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", hook.url("allow"), hook.ca_bundle,
                            resources=("virtualmachines/status",)))
    await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"a": "b"}}}, content_type=MERGE)
    await raw.call("PATCH", f"{VMS}/vm1/status", {"status": {"ready": False}}, content_type=MERGE)
    (_, request), = hook.calls
    assert request["subResource"] == "status"


async def test_dry_run_reaches_webhooks_without_side_effects_and_stores_nothing(
        raw: RawClient, hook: ScriptedWebhook, apiserver: ApiServer) -> None:
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", hook.url("allow"), hook.ca_bundle))
    answer = await raw.call("POST", f"{VMS}?dryRun=All", vm("vm1"))
    assert answer.status == 201
    (_, request), = hook.calls
    assert request["dryRun"] is True
    assert apiserver.store.count(("kubevirt.io", "virtualmachines")) == 0


async def test_unreachable_webhook_with_fail_policy_refuses_the_write(raw: RawClient, apiserver: ApiServer) -> None:
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", "https://127.0.0.1:9/nowhere", None, failure_policy="Fail",
                            timeout_seconds=1))
    answer = await raw.call("POST", VMS, vm("vm1"))
    assert answer.status == 500
    assert answer.body["message"].startswith('Internal error occurred: failed calling webhook "v.nichotplug.test"')
    assert apiserver.store.count(("kubevirt.io", "virtualmachines")) == 0


async def test_concurrent_patches_during_slow_admission_are_both_kept(raw: RawClient, hook: ScriptedWebhook) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", hook.url("slow", seconds="0.2"), hook.ca_bundle, timeout_seconds=10))
    first, second = await asyncio.gather(
        raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"a": "1"}}}, content_type=MERGE),
        raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"b": "2"}}}, content_type=MERGE))
    assert (first.status, second.status) == (200, 200)
    assert (await raw.call("GET", f"{VMS}/vm1")).body["metadata"]["labels"] == {"a": "1", "b": "2"}


async def test_concurrent_update_with_the_same_resource_version_conflicts(
        raw: RawClient, hook: ScriptedWebhook) -> None:
    stored = (await raw.call("POST", VMS, vm("vm1"))).body
    await _register(raw, "ValidatingWebhookConfiguration", "v",
                    webhook("v.nichotplug.test", hook.url("slow", seconds="0.2"), hook.ca_bundle, timeout_seconds=10))
    one, two = (json.loads(json.dumps(stored)) for _ in range(2))
    one["metadata"]["labels"], two["metadata"]["labels"] = {"a": "1"}, {"b": "2"}
    answers = await asyncio.gather(raw.call("PUT", f"{VMS}/vm1", one), raw.call("PUT", f"{VMS}/vm1", two))
    assert sorted(a.status for a in answers) == [200, 409]
