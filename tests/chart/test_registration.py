"""webhook/registration.py: the declarations and the webhook configurations built from them."""

from __future__ import annotations

import base64

import pytest

from nichotplug.webhook.registration import (
    JUDGED_CHANGE,
    JUDGED_FIELDS,
    MUTATING_WEBHOOK,
    REQUIRED_RBAC,
    VALIDATING_WEBHOOK,
    JudgedField,
    Scope,
    ServiceRef,
    required_permissions,
    webhook_configurations,
)


def test_declarations_cover_vm_create_and_update_only() -> None:
    for webhook in (MUTATING_WEBHOOK, VALIDATING_WEBHOOK):
        assert webhook.as_webhook_rules() == [{
            "apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "resources": ["virtualmachines"],
            "operations": ["CREATE", "UPDATE"], "scope": "Namespaced",
        }]
    assert (MUTATING_WEBHOOK.path, VALIDATING_WEBHOOK.path) == ("/v1/webhook/mutation", "/v1/webhook/validation")
    assert MUTATING_WEBHOOK.name != VALIDATING_WEBHOOK.name


def test_url_mode_appends_each_path_and_encodes_the_ca() -> None:
    mutating, validating = webhook_configurations("nichotplug", url="https://127.0.0.1:9443/",
                                                  ca_bundle=b"-----PEM-----\n")
    assert mutating["kind"] == "MutatingWebhookConfiguration"
    assert validating["kind"] == "ValidatingWebhookConfiguration"
    for obj, path in ((mutating, MUTATING_WEBHOOK.path), (validating, VALIDATING_WEBHOOK.path)):
        config = obj["webhooks"][0]["clientConfig"]
        assert config["url"] == "https://127.0.0.1:9443" + path
        assert base64.b64decode(config["caBundle"]) == b"-----PEM-----\n"
    assert mutating["webhooks"][0]["failurePolicy"] == "Ignore"
    assert validating["webhooks"][0]["failurePolicy"] == "Fail"


def test_service_mode_without_ca_leaves_ca_bundle_out() -> None:
    mutating, _ = webhook_configurations("n", service=ServiceRef("ns", "svc"))
    assert mutating["webhooks"][0]["clientConfig"] == {
        "service": {"namespace": "ns", "name": "svc", "path": "/v1/webhook/mutation", "port": 443}}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one of service= or url="),
    ({"url": "https://x", "service": ServiceRef("a", "b")}, "exactly one"),
    ({"url": "http://127.0.0.1:9443"}, "must use https"),
    ({"url": "https://x", "timeout_seconds": 0}, "between 1 and 30"),
    ({"url": "https://x", "failure_policies": {"mutating": "Sometimes"}}, "'Fail' or 'Ignore'"),
    ({"url": "https://x", "failure_policies": {"both": "Fail"}}, "'mutating' or 'validating'"),
])
def test_bad_arguments_are_refused_clearly(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        webhook_configurations("n", **kwargs)  # type: ignore[arg-type]


def test_cert_manager_mode_needs_no_secret_or_webhook_rights() -> None:
    resources = {perm.resource for perm in required_permissions(self_managed_certs=False)}
    assert "secrets" not in resources
    assert "mutatingwebhookconfigurations" not in resources
    assert set(required_permissions(self_managed_certs=True)) == set(REQUIRED_RBAC)


def test_create_is_never_limited_by_name_and_own_objects_stay_in_the_namespace() -> None:
    for perm in REQUIRED_RBAC:
        if perm.by_name:
            assert not perm.verbs & {"create", "list", "watch"}
        if perm.resource in ("leases", "secrets"):
            assert perm.scope is Scope.OWN_NAMESPACE


def test_each_webhook_carries_its_own_match_conditions() -> None:
    mutating, validating = webhook_configurations("n", url="https://x")
    assert [c["name"] for c in mutating["webhooks"][0]["matchConditions"]] == [
        "not-being-deleted", "an-interface-without-mac"]
    assert [c["name"] for c in validating["webhooks"][0]["matchConditions"]] == [
        "not-being-deleted", "create-or-judged-field-changed"]
    assert validating["webhooks"][0]["matchConditions"][1] == JUDGED_CHANGE


def test_judged_fields_read_behind_has_guards() -> None:
    annotation = JudgedField(("metadata", "annotations"), "example.com/a", "''", "")
    assert annotation.cel_value("oldObject") == (
        "((has(oldObject.metadata) && has(oldObject.metadata.annotations) && 'example.com/a' in "
        "oldObject.metadata.annotations) ? oldObject.metadata.annotations['example.com/a'] : '')")
    assert all(field.cel_value("object") in JUDGED_CHANGE["expression"] for field in JUDGED_FIELDS)


def test_a_key_that_would_need_escaping_in_cel_is_refused() -> None:
    with pytest.raises(ValueError, match="needs escaping in CEL"):
        JudgedField(("metadata", "annotations"), "it's", "''", "").cel_value("object")
