"""Built-in objects are refused where kube-apiserver refuses them: Leases, Events, TLS Secrets and
webhook configurations, the kinds nichotplug, its chart and its tests write."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nichotplug.webhook.registration import ServiceRef, webhook_configurations

from .api_support import RawClient

LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
EVENTS = "/api/v1/namespaces/default/events"
SECRETS = "/api/v1/namespaces/default/secrets"
VALIDATING = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"



def lease(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "l"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15,
                     "renewTime": "2026-11-28T12:00:00.123456Z", **spec}}


def event(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": "vm1.1"},
            "involvedObject": {"kind": "VirtualMachine", "namespace": "default", "name": "vm1"},
            "reason": "MacMismatch", "message": "m", "type": "Warning", **fields}


def invalid_fields(body: dict[str, Any]) -> list[str]:
    return [cause["field"] for cause in body["details"]["causes"]]


async def test_a_lease_as_nichotplug_writes_it_is_stored(raw: RawClient) -> None:
    assert (await raw.call("POST", LEASES, lease(acquireTime="2026-11-28T12:00:00.000001+01:00"))).status == 201


@pytest.mark.parametrize("when", ["yesterday", "2026-11-28T12:00:00Z", "2026-11-28T12:00:00.123Z"])
async def test_a_lease_time_in_another_format_cannot_even_be_decoded(raw: RawClient, when: str) -> None:
    answer = await raw.call("POST", LEASES, lease(renewTime=when))
    assert (answer.status, answer.body["reason"]) == (400, "BadRequest")
    assert answer.body["message"].startswith(f'Lease in version "v1" cannot be handled as a Lease: parsing time '
                                             f'"{when}" as "2006-01-02T15:04:05.000000Z07:00"')


@pytest.mark.parametrize(("spec", "field"), [
    ({"leaseDurationSeconds": 0}, "spec.leaseDurationSeconds"),
    ({"leaseTransitions": -1}, "spec.leaseTransitions"),
])
async def test_lease_numbers_out_of_range_are_invalid(raw: RawClient, spec: dict[str, Any], field: str) -> None:
    answer = await raw.call("POST", LEASES, lease(**spec))
    assert (answer.status, invalid_fields(answer.body)) == (422, [field])


async def test_an_event_about_an_object_of_its_own_namespace_is_stored(raw: RawClient) -> None:
    assert (await raw.call("POST", EVENTS, event())).status == 201


@pytest.mark.parametrize(("fields", "invalid"), [
    ({"involvedObject": {"kind": "VirtualMachine", "namespace": "other", "name": "vm1"}},
     ["involvedObject.namespace"]),
    ({"eventTime": "2026-11-28T12:00:00.000000Z"}, ["reportingComponent", "reportingInstance", "action"]),
], ids=["namespace-mismatch", "event-time-without-reporter"])
async def test_events_the_legacy_rules_refuse(raw: RawClient, fields: dict[str, Any], invalid: list[str]) -> None:
    answer = await raw.call("POST", EVENTS, event(**fields))
    assert (answer.status, invalid_fields(answer.body)) == (422, invalid)


async def test_a_tls_secret_needs_its_certificate_and_key(raw: RawClient) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "t"}, "type": "kubernetes.io/tls",
              "data": {"tls.crt": "Q0VSVA=="}}
    answer = await raw.call("POST", SECRETS, secret)
    assert (answer.status, invalid_fields(answer.body)) == (422, ["data[tls.key]"])


def ours(**options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return webhook_configurations("nichotplug", service=ServiceRef("harvester-system", "nichotplug"), **options)


@pytest.mark.parametrize("options", [{}, {"excluded_namespaces": ()}, {"timeout_seconds": 30}],
                         ids=["default", "no-excluded-namespaces", "longest-timeout"])
async def test_the_webhook_configurations_nichotplug_declares_are_accepted(
        raw: RawClient, options: dict[str, Any]) -> None:
    mutating, validating = ours(**options)
    assert (await raw.call("POST", MUTATING, mutating)).status == 201
    assert (await raw.call("POST", VALIDATING, validating)).status == 201


def broken(change: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(ours()[1])
    config["webhooks"][0].update(change)
    return config


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"name": "validate-vm"}, "webhooks[0].name", "at least three segments"),
    ({"timeoutSeconds": 60}, "webhooks[0].timeoutSeconds", "between 1 and 30 seconds"),
    ({"sideEffects": "Some"}, "webhooks[0].sideEffects", 'supported values: "None", "NoneOnDryRun"'),
    ({"admissionReviewVersions": []}, "webhooks[0].admissionReviewVersions", "Required value"),
    ({"failurePolicy": "Sometimes"}, "webhooks[0].failurePolicy", "Unsupported value"),
    ({"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": []}]}},
     "webhooks[0].namespaceSelector.matchExpressions[0].values", "when `operator` is 'In' or 'NotIn'"),
    ({"clientConfig": {"url": "http://127.0.0.1:9443/v"}}, "webhooks[0].clientConfig.url", "'https' is the only"),
    ({"clientConfig": {}}, "webhooks[0].clientConfig", "exactly one of url or service"),
    ({"rules": [{"apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "operations": ["PATCH"],
                 "resources": ["virtualmachines"]}]}, "webhooks[0].rules[0].operations", "Unsupported value"),
    # kube-apiserver v1.36.2 words it so, with cel-go's parser message after "compilation failed: "
    ({"matchConditions": [{"name": "x", "expression": "1 +"}]}, "webhooks[0].matchConditions[0].expression",
     "Invalid value: \"1 +\": compilation failed: ERROR: <input>:1:4: Syntax error: mismatched input '<EOF>'"),
], ids=["name", "timeout", "side-effects", "review-versions", "failure-policy", "empty-not-in", "http-url",
        "no-client", "operation", "unparsable-match-condition"])
async def test_webhook_configurations_the_real_server_refuses(raw: RawClient, change: dict[str, Any], field: str,
                                                              words: str) -> None:
    answer = await raw.call("POST", VALIDATING, broken(change))
    assert (answer.status, invalid_fields(answer.body)) == (422, [field])
    assert words in answer.body["message"]
    assert (await raw.call("GET", f"{VALIDATING}/nichotplug")).status == 404


async def test_two_webhooks_of_one_name_are_a_duplicate(raw: RawClient) -> None:
    config = ours()[1]
    config["webhooks"].append(copy.deepcopy(config["webhooks"][0]))
    answer = await raw.call("POST", VALIDATING, config)
    assert (answer.status, invalid_fields(answer.body)) == (422, ["webhooks[1].name"])
