"""The in-process API server's admission chain against real HTTPS webhooks started in the test."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from nichotplug.certs import CertBundle
from nichotplug.testing.admission import AdmissionAttributes, AdmissionError, UserInfo, admit
from nichotplug.testing.errors import StatusError
from nichotplug.testing.fixtures import SHARED_FIXTURES
from nichotplug.testing.resources import BUILTIN_RESOURCES, ResourceInfo

from .admission_support import ScriptedWebhook, configuration, tls_bundle, webhook

ADMISSION_FIXTURES = SHARED_FIXTURES / "admission"
APISERVER_FIXTURES = SHARED_FIXTURES / "apiserver"
needs_fixtures = pytest.mark.skipif(not ADMISSION_FIXTURES.is_dir(), reason="recorded fixtures not on this machine")

VMS = ResourceInfo(group="kubevirt.io", version="v1", plural="virtualmachines", singular="virtualmachine",
                   kind="VirtualMachine", namespaced=True, list_kind="VirtualMachineList",
                   subresources=frozenset({"status"}))
NAMESPACES = next(info for info in BUILTIN_RESOURCES if info.plural == "namespaces")
MUTATING_WEBHOOKS = next(info for info in BUILTIN_RESOURCES if info.plural == "mutatingwebhookconfigurations")
ADMIN = UserInfo(username="admin", uid="admin-uid", groups=("system:masters", "system:authenticated"))
NAMESPACE_LABELS = {"default": {"team": "blue", "env": "prod"}, "lab": {"team": "red"}}

MUTATING = "MutatingWebhookConfiguration"
VALIDATING = "ValidatingWebhookConfiguration"


def vm(name: str = "vm1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "default"}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": metadata,
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}}


def attributes(operation: str = "CREATE", *, obj: dict[str, Any] | None = None,
               old_obj: dict[str, Any] | None = None, subresource: str = "", resource: ResourceInfo = VMS,
               namespace: str = "default", name: str = "vm1", dry_run: bool = False,
               options: dict[str, Any] | None = None) -> AdmissionAttributes:
    if obj is None and operation != "DELETE":
        obj = vm(name)
    return AdmissionAttributes(operation=operation, resource=resource, subresource=subresource,
                               namespace=namespace, name=name, obj=obj, old_obj=old_obj, user=ADMIN,
                               dry_run=dry_run, options=options)


def namespace_labels(namespace: str) -> Mapping[str, str]:
    return NAMESPACE_LABELS.get(namespace, {})


@pytest.fixture(scope="module")
def bundle() -> CertBundle:
    return tls_bundle()


@pytest.fixture
async def hook(bundle: CertBundle) -> AsyncIterator[ScriptedWebhook]:
    server = ScriptedWebhook(bundle)
    await server.start()
    yield server
    await server.stop()


async def run(attrs: AdmissionAttributes, mutating: list[dict[str, Any]] | None = None,
              validating: list[dict[str, Any]] | None = None) -> Any:
    return await admit(attrs, mutating or [], validating or [], namespace_labels)


# ------------------------------------------------------------------------------ the review itself

def _recorded_request(file_name: str) -> dict[str, Any]:
    return dict(json.loads((ADMISSION_FIXTURES / file_name).read_text())["request"])


@needs_fixtures
async def test_create_review_is_built_like_the_real_servers(hook: ScriptedWebhook) -> None:
    recorded = _recorded_request("001-mutate-CREATE-virtualmachines-mut-vm1.json")
    obj = recorded["object"]
    attrs = attributes(obj=obj, name=recorded["name"], options=recorded["options"])
    await run(attrs, [configuration(MUTATING, "m", webhook("rec", hook.url("allow"), hook.ca_bundle))])
    (_, sent), = hook.calls
    assert sorted(sent) == sorted(recorded)
    for key in ("kind", "resource", "requestKind", "requestResource", "name", "namespace", "operation",
                "userInfo", "object", "oldObject", "dryRun", "options"):
        assert sent[key] == recorded[key], key
    assert sent["uid"] != recorded["uid"]


@needs_fixtures
async def test_status_subresource_review_names_the_subresource(hook: ScriptedWebhook) -> None:
    recorded = _recorded_request("011-mutate-UPDATE-virtualmachines-status-mut-vm1.json")
    attrs = attributes("UPDATE", obj=recorded["object"], old_obj=recorded["oldObject"], subresource="status",
                       name=recorded["name"], options=recorded["options"])
    status_hook = webhook("rec", hook.url("allow"), hook.ca_bundle, resources=("virtualmachines/status",))
    await run(attrs, [configuration(MUTATING, "m", status_hook)])
    (_, sent), = hook.calls
    assert sorted(sent) == sorted(recorded)
    for key in ("kind", "resource", "subResource", "requestSubResource", "operation", "object", "oldObject"):
        assert sent[key] == recorded[key], key


@needs_fixtures
async def test_delete_review_sends_null_object_and_the_old_one(hook: ScriptedWebhook) -> None:
    recorded = _recorded_request("033-mutate-DELETE-virtualmachines-warn-vm5.json")
    attrs = attributes("DELETE", obj=None, old_obj=recorded["oldObject"], name=recorded["name"],
                       options=recorded["options"])
    result = await run(attrs, [configuration(MUTATING, "m", webhook("rec", hook.url("allow"), hook.ca_bundle))])
    (_, sent), = hook.calls
    assert sorted(sent) == sorted(recorded)
    assert sent["object"] is None
    assert sent["oldObject"] == recorded["oldObject"]
    assert result.obj is None


async def test_default_options_name_the_operation_and_dry_run(hook: ScriptedWebhook) -> None:
    await run(attributes(dry_run=True), [configuration(
        MUTATING, "m", webhook("rec", hook.url("allow"), hook.ca_bundle))])
    (_, sent), = hook.calls
    assert sent["dryRun"] is True
    assert sent["options"] == {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "dryRun": ["All"]}


async def test_every_call_gets_its_own_uid_and_the_timeout_in_the_url(hook: ScriptedWebhook) -> None:
    await run(attributes(),
              [configuration(MUTATING, "m", webhook("one", hook.url("allow"), hook.ca_bundle, timeout_seconds=7))],
              [configuration(VALIDATING, "v", webhook("two", hook.url("allow"), hook.ca_bundle))])
    assert len({sent["uid"] for _, sent in hook.calls}) == 2
    assert hook.called_paths() == ["/allow", "/allow"]


# ------------------------------------------------------------------------------ mutation and order

async def test_mutating_webhooks_run_in_configuration_name_order_each_seeing_earlier_patches(
        hook: ScriptedWebhook) -> None:
    attrs = attributes(obj=vm(labels={"origin": "user"}))
    original = copy.deepcopy(attrs.obj)
    second = configuration(MUTATING, "b-second",
                           webhook("b1", hook.url("patch/b1", label="by-b1", value="yes"), hook.ca_bundle),
                           webhook("b2", hook.url("patch/b2", label="by-b2", value="yes"), hook.ca_bundle))
    first = configuration(MUTATING, "a-first",
                          webhook("a1", hook.url("patch/a1", label="by-a1", value="yes"), hook.ca_bundle))
    validating = configuration(VALIDATING, "v", webhook("v1", hook.url("allow/v"), hook.ca_bundle))

    result = await run(attrs, [second, first], [validating])

    assert hook.called_paths() == ["/patch/a1", "/patch/b1", "/patch/b2", "/allow/v"]
    seen_labels = [sent["object"]["metadata"]["labels"] for _, sent in hook.calls]
    assert seen_labels[1] == {"origin": "user", "by-a1": "yes"}
    assert seen_labels[3] == {"origin": "user", "by-a1": "yes", "by-b1": "yes", "by-b2": "yes"}
    assert result.obj["metadata"]["labels"] == seen_labels[3]
    assert attrs.obj == original  # the caller's object is left alone


async def test_patch_creating_the_labels_map(hook: ScriptedWebhook) -> None:
    result = await run(attributes(obj=vm(labels=None)), [configuration(
        MUTATING, "m", webhook("p", hook.url("patch", label="a", value="b"), hook.ca_bundle))])
    assert result.obj["metadata"]["labels"] == {"a": "b"}


async def test_if_needed_webhook_is_called_again_after_a_later_change(hook: ScriptedWebhook) -> None:
    config = configuration(
        MUTATING, "m",
        webhook("again", hook.url("allow/again"), hook.ca_bundle, reinvocationPolicy="IfNeeded"),
        webhook("never", hook.url("allow/never"), hook.ca_bundle, reinvocationPolicy="Never"),
        webhook("changer", hook.url("patch/changer", label="x", value="y"), hook.ca_bundle))
    await run(attributes(), [config])
    assert hook.called_paths() == ["/allow/again", "/allow/never", "/patch/changer", "/allow/again"]
    assert hook.calls[-1][1]["object"]["metadata"]["labels"] == {"x": "y"}


async def test_if_needed_webhook_is_not_called_again_without_a_later_change(hook: ScriptedWebhook) -> None:
    config = configuration(MUTATING, "m",
                           webhook("again", hook.url("allow/again"), hook.ca_bundle, reinvocationPolicy="IfNeeded"),
                           webhook("other", hook.url("allow/other"), hook.ca_bundle))
    await run(attributes(), [config])
    assert hook.called_paths() == ["/allow/again", "/allow/other"]


async def test_a_patch_that_cannot_be_applied_fails_even_under_ignore(hook: ScriptedWebhook) -> None:
    config = configuration(MUTATING, "m",
                           webhook("broken", hook.url("bad-patch"), hook.ca_bundle, failure_policy="Ignore"))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), [config])
    assert (caught.value.code, caught.value.reason) == (500, "InternalError")
    assert caught.value.message.startswith('Internal error occurred: the patch of webhook "broken" cannot be applied')


async def test_a_validating_webhook_may_not_patch(hook: ScriptedWebhook) -> None:
    config = configuration(VALIDATING, "v", webhook("sneaky", hook.url("validate-patch"), hook.ca_bundle))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), validating=[config])
    assert caught.value.code == 500
    assert "validating webhook may not return a patch" in caught.value.message


# ------------------------------------------------------------------------------------------ rules

@pytest.mark.parametrize(("resources", "subresource", "called"), [
    (("virtualmachines",), "", True),
    (("virtualmachines",), "status", False),
    (("*",), "", True),
    (("*",), "status", False),
    (("*/*",), "status", True),
    (("*/*",), "", True),
    (("virtualmachines/status",), "status", True),
    (("virtualmachines/status",), "", False),
    (("virtualmachines/*",), "status", True),
    (("*/status",), "status", True),
    (("virtualmachineinstances",), "", False),
])
async def test_resources_rule(hook: ScriptedWebhook, resources: tuple[str, ...], subresource: str,
                              called: bool) -> None:
    config = configuration(MUTATING, "m", webhook("w", hook.url("allow"), hook.ca_bundle, resources=resources))
    await run(attributes("UPDATE", old_obj=vm(), subresource=subresource), [config])
    assert bool(hook.calls) is called


@pytest.mark.parametrize(("rule", "called"), [
    ({"operations": ("CREATE",)}, True),
    ({"operations": ("*",)}, True),
    ({"operations": ("UPDATE", "DELETE")}, False),
    ({"api_groups": ("*",)}, True),
    ({"api_groups": ("",)}, False),
    ({"api_versions": ("*",)}, True),
    ({"api_versions": ("v1alpha3",)}, False),
    ({"scope": "Namespaced"}, True),
    ({"scope": "Cluster"}, False),
    ({"scope": "*"}, True),
])
async def test_operation_group_version_and_scope_rules(hook: ScriptedWebhook, rule: dict[str, Any],
                                                       called: bool) -> None:
    config = configuration(MUTATING, "m", webhook("w", hook.url("allow"), hook.ca_bundle, **rule))
    await run(attributes("CREATE"), [config])
    assert bool(hook.calls) is called


async def test_cluster_scope_rule_matches_namespaces(hook: ScriptedWebhook) -> None:
    config = configuration(VALIDATING, "v", webhook("w", hook.url("allow"), hook.ca_bundle, api_groups=("",),
                                                    resources=("namespaces",), scope="Cluster"))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab"}}
    await run(attributes(obj=namespace, resource=NAMESPACES, namespace="", name="lab"), validating=[config])
    assert hook.called_paths() == ["/allow"]


async def test_webhook_configurations_themselves_are_never_sent_to_webhooks(hook: ScriptedWebhook) -> None:
    everything = webhook("all", hook.url("deny"), hook.ca_bundle, api_groups=("*",), api_versions=("*",),
                         resources=("*/*",), operations=("*",))
    config = configuration(VALIDATING, "v", everything)
    result = await run(attributes(obj=config, resource=MUTATING_WEBHOOKS, namespace="", name="v"),
                       [configuration(MUTATING, "m", everything)], [config])
    assert hook.calls == []
    assert result.obj == config


# ------------------------------------------------------------------------------------- selectors

@pytest.mark.parametrize(("selector", "namespace", "called"), [
    ({}, "default", True),
    ({"matchLabels": {"team": "blue"}}, "default", True),
    ({"matchLabels": {"team": "blue"}}, "lab", False),
    ({"matchLabels": {"team": "blue"}}, "unlabelled", False),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["red", "green"]}]}, "lab", True),
    ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["red", "green"]}]}, "default", False),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["red"]}]}, "default", True),
    ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["red"]}]}, "unlabelled", True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, "default", True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, "lab", False),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, "lab", True),
    ({"matchLabels": {"team": "blue"},
      "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev"]}]}, "default", False),
])
async def test_namespace_selector(hook: ScriptedWebhook, selector: dict[str, Any], namespace: str,
                                  called: bool) -> None:
    config = configuration(MUTATING, "m", webhook("w", hook.url("allow"), hook.ca_bundle,
                                                  namespace_selector=selector))
    await run(attributes(namespace=namespace), [config])
    assert bool(hook.calls) is called


async def test_namespace_selector_on_a_namespace_uses_its_own_labels(hook: ScriptedWebhook) -> None:
    config = configuration(VALIDATING, "v", webhook(
        "w", hook.url("allow"), hook.ca_bundle, api_groups=("",), resources=("namespaces",),
        namespace_selector={"matchLabels": {"watched": "yes"}}))
    watched = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "new", "labels": {"watched": "yes"}}}
    plain = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}
    await run(attributes(obj=watched, resource=NAMESPACES, namespace="", name="new"), validating=[config])
    await run(attributes(obj=plain, resource=NAMESPACES, namespace="", name="other"), validating=[config])
    assert [sent["name"] for _, sent in hook.calls] == ["new"]


async def test_object_selector_matches_the_new_or_the_old_object(hook: ScriptedWebhook) -> None:
    config = configuration(MUTATING, "m", webhook("w", hook.url("allow"), hook.ca_bundle,
                                                  object_selector={"matchLabels": {"hotplug": "on"}}))
    await run(attributes(obj=vm(labels={"hotplug": "off"})), [config])
    assert hook.calls == []
    await run(attributes(obj=vm(labels={"hotplug": "on"})), [config])
    await run(attributes("DELETE", old_obj=vm(labels={"hotplug": "on"})), [config])
    await run(attributes("UPDATE", obj=vm(labels={}), old_obj=vm(labels={"hotplug": "on"})), [config])
    assert [sent["operation"] for _, sent in hook.calls] == ["CREATE", "DELETE", "UPDATE"]


async def test_an_invalid_selector_is_an_internal_error_and_calls_nothing(hook: ScriptedWebhook) -> None:
    bad = {"matchExpressions": [{"key": "team", "operator": "Near", "values": ["x"]}]}
    config = configuration(MUTATING, "m", webhook("w", hook.url("allow"), hook.ca_bundle, namespace_selector=bad))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), [config])
    assert (caught.value.code, caught.value.reason) == (500, "InternalError")
    assert "unknown label selector operator 'Near'" in caught.value.message
    assert hook.calls == []


async def test_in_without_values_is_an_invalid_selector(hook: ScriptedWebhook) -> None:
    bad = {"matchExpressions": [{"key": "team", "operator": "In"}]}
    config = configuration(MUTATING, "m", webhook("w", hook.url("allow"), hook.ca_bundle, object_selector=bad))
    with pytest.raises(StatusError, match="needs values"):
        await run(attributes(), [config])


# -------------------------------------------------------------------------------- denials, warnings

@needs_fixtures
async def test_denial_with_a_code_is_answered_like_the_real_server(hook: ScriptedWebhook) -> None:
    recorded = json.loads((APISERVER_FIXTURES / "15-webhook-denied.json").read_text())["response"]
    message = recorded["body"]["message"].split("denied the request: ", 1)[1]
    config = configuration(VALIDATING, "v", webhook(
        "validate.recorder.test", hook.url("deny", code=409, message=message.replace(" ", "%20")), hook.ca_bundle))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), validating=[config])
    status = caught.value.to_status()
    assert status == recorded["body"]
    assert caught.value.code == recorded["status"]


@pytest.mark.parametrize(("query", "code", "reason", "message_end"), [
    ({"code": 403, "message": "not%20eligible"}, 403, "Forbidden", ": not eligible"),
    ({"message": "no%20code"}, 400, "BadRequest", ": no code"),
    ({"code": 200, "message": "odd"}, 400, "BadRequest", ": odd"),
    ({"code": 422, "message": "bad"}, 422, "Invalid", ": bad"),
    ({"code": 409, "reason": "AlreadyExists"}, 409, "AlreadyExists", ": AlreadyExists"),
    ({}, 400, "BadRequest", " without explanation"),
])
async def test_denial_codes_reasons_and_messages(hook: ScriptedWebhook, query: dict[str, Any], code: int,
                                                 reason: str, message_end: str) -> None:
    config = configuration(MUTATING, "m", webhook("deny.example", hook.url("deny", **query), hook.ca_bundle))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), [config])
    assert (caught.value.code, caught.value.reason) == (code, reason)
    assert caught.value.message == 'admission webhook "deny.example" denied the request' + message_end


async def test_a_mutating_denial_stops_the_chain(hook: ScriptedWebhook) -> None:
    config = configuration(MUTATING, "m", webhook("no", hook.url("deny", code=403), hook.ca_bundle),
                           webhook("later", hook.url("allow/later"), hook.ca_bundle))
    validating = configuration(VALIDATING, "v", webhook("v", hook.url("allow/v"), hook.ca_bundle))
    with pytest.raises(StatusError):
        await run(attributes(), [config], [validating])
    assert hook.called_paths() == ["/deny"]


async def test_warnings_of_every_webhook_are_collected(hook: ScriptedWebhook) -> None:
    result = await run(attributes(),
                       [configuration(MUTATING, "m", webhook("w1", hook.url("warn", text="first"), hook.ca_bundle))],
                       [configuration(VALIDATING, "v",
                                      webhook("w2", hook.url("warn", text="second"), hook.ca_bundle),
                                      webhook("w3", hook.url("allow"), hook.ca_bundle))])
    assert result.warnings == ["first", "second"]


@needs_fixtures
async def test_a_denial_still_carries_the_warnings(hook: ScriptedWebhook) -> None:
    recorded = json.loads((APISERVER_FIXTURES / "15-webhook-denied.json").read_text())["response"]
    assert recorded["headers"]["Warning"] == '299 - "a warning from the webhook"'
    config = configuration(VALIDATING, "v",
                           webhook("w1", hook.url("warn", text="before"), hook.ca_bundle),
                           webhook("w2", hook.url("deny", code=409, warning="a%20warning%20from%20the%20webhook"),
                                   hook.ca_bundle))
    with pytest.raises(AdmissionError) as caught:
        await run(attributes(), validating=[config])
    assert caught.value.warnings == ["before", "a warning from the webhook"]


# ------------------------------------------------------------------------------ failures and policy

async def test_timeout_under_fail_is_an_internal_error_naming_the_webhook(hook: ScriptedWebhook) -> None:
    url = hook.url("slow", seconds=1.5)
    config = configuration(MUTATING, "m", webhook("sleepy", url, hook.ca_bundle, timeout_seconds=1))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), [config])
    assert (caught.value.code, caught.value.reason) == (500, "InternalError")
    assert caught.value.message == (
        f'Internal error occurred: failed calling webhook "sleepy": failed to call webhook: '
        f'Post "{url}&timeout=1s": context deadline exceeded')
    assert caught.value.to_status()["details"] == {"causes": [{"message": caught.value.message.removeprefix(
        "Internal error occurred: ")}]}


async def test_timeout_under_ignore_skips_the_webhook(hook: ScriptedWebhook) -> None:
    config = configuration(MUTATING, "m",
                           webhook("sleepy", hook.url("slow", seconds=1.5), hook.ca_bundle, timeout_seconds=1,
                                   failure_policy="Ignore"),
                           webhook("next", hook.url("patch", label="a", value="b"), hook.ca_bundle))
    result = await run(attributes(), [config])
    assert hook.called_paths() == ["/slow", "/patch"]
    assert result.obj["metadata"]["labels"] == {"a": "b"}


@pytest.mark.parametrize(("behaviour", "explanation"), [
    ("wrong-uid", "received invalid webhook response: expected response.uid="),
    ("http-500", "the server responded with HTTP 500: webhook crashed"),
    ("not-json", "received invalid webhook response: the body is not JSON"),
])
async def test_bad_answers_fail_under_fail_and_are_skipped_under_ignore(
        hook: ScriptedWebhook, behaviour: str, explanation: str) -> None:
    failing = configuration(VALIDATING, "v", webhook("odd", hook.url(behaviour), hook.ca_bundle))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), validating=[failing])
    assert caught.value.code == 500
    assert caught.value.message.startswith('Internal error occurred: failed calling webhook "odd": ')
    assert explanation in caught.value.message

    ignored = configuration(VALIDATING, "v", webhook("odd", hook.url(behaviour), hook.ca_bundle,
                                                     failure_policy="Ignore"))
    result = await run(attributes(), validating=[ignored])
    assert result.warnings == []


async def test_an_untrusted_certificate_is_refused(hook: ScriptedWebhook) -> None:
    other_ca = tls_bundle()
    config = configuration(MUTATING, "m", webhook("tls", hook.url("allow"),
                                                  ScriptedWebhook(other_ca).ca_bundle))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), [config])
    assert caught.value.code == 500
    assert "tls: failed to verify certificate" in caught.value.message
    assert hook.calls == []


async def test_the_server_name_comes_from_the_url(hook: ScriptedWebhook) -> None:
    # The certificate names 127.0.0.1 only: reaching the same server as "localhost" must fail.
    config = configuration(MUTATING, "m", webhook("tls", hook.url("allow", url_host="localhost"), hook.ca_bundle))
    with pytest.raises(StatusError, match="tls: failed to verify certificate"):
        await run(attributes(), [config])
    assert hook.calls == []


async def test_an_unreachable_webhook_under_fail(bundle: CertBundle) -> None:
    closed = ScriptedWebhook(bundle)
    await closed.start()
    url = closed.url("allow")
    await closed.stop()
    config = configuration(MUTATING, "m", webhook("gone", url, closed.ca_bundle))
    with pytest.raises(StatusError) as caught:
        await run(attributes(), [config])
    assert caught.value.message.startswith(
        f'Internal error occurred: failed calling webhook "gone": failed to call webhook: Post "{url}?timeout=10s": ')


@pytest.mark.parametrize("ca_bundle", ["not base64!", "aGVsbG8="])  # the second is base64 of "hello"
async def test_a_garbled_ca_bundle_is_a_call_failure(hook: ScriptedWebhook, ca_bundle: str) -> None:
    config = configuration(MUTATING, "m", webhook("tls", hook.url("allow"), ca_bundle))
    with pytest.raises(StatusError, match="caBundle is not a base64 PEM certificate bundle"):
        await run(attributes(), [config])
    assert hook.calls == []


@pytest.mark.parametrize("seconds", [0, 31, "10", 2.5, True])
async def test_an_impossible_timeout_is_a_call_failure(hook: ScriptedWebhook, seconds: object) -> None:
    config = configuration(MUTATING, "m", webhook("t", hook.url("allow"), hook.ca_bundle, timeoutSeconds=seconds))
    with pytest.raises(StatusError, match="timeoutSeconds must be an integer from 1 to 30"):
        await run(attributes(), [config])
    assert hook.calls == []


@pytest.mark.parametrize(("client_config", "explanation"), [
    ({"service": {"namespace": "harvester-system", "name": "nichotplug", "path": "/v1/webhook/mutation"}},
     "clientConfig.service is not supported by the in-process API server"),
    ({"url": "http://127.0.0.1:1/plain"}, "must be an https URL"),
    ({}, "neither clientConfig.url nor clientConfig.service"),
])
async def test_unusable_client_configs(hook: ScriptedWebhook, client_config: dict[str, Any],
                                       explanation: str) -> None:
    entry = webhook("svc", "", None)
    entry["clientConfig"] = client_config
    with pytest.raises(StatusError) as caught:
        await run(attributes(), [configuration(MUTATING, "m", entry)])
    assert caught.value.code == 500
    assert explanation in caught.value.message
    ignored = dict(entry, failurePolicy="Ignore")
    assert (await run(attributes(), [configuration(MUTATING, "m", ignored)])).warnings == []


async def test_a_webhook_without_v1_reviews_fails(hook: ScriptedWebhook) -> None:
    entry = webhook("old", hook.url("allow"), hook.ca_bundle, admissionReviewVersions=["v1beta1"])
    with pytest.raises(StatusError, match="does not accept v1 AdmissionReview"):
        await run(attributes(), [configuration(MUTATING, "m", entry)])
    assert hook.calls == []


NOT_DELETING = [{"name": "not-being-deleted", "expression": "!has(object.metadata.deletionTimestamp)"}]


def deleting(obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "deletionTimestamp": "2026-11-28T06:00:00Z",
                                "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"]}}


@pytest.mark.parametrize("kind", [MUTATING, VALIDATING])
async def test_a_false_match_condition_skips_the_webhook_a_true_one_calls_it(hook: ScriptedWebhook,
                                                                           kind: str) -> None:
    entry = webhook("gated", hook.url("deny", code=403, message="no"), hook.ca_bundle,
                    operations=("UPDATE",), matchConditions=NOT_DELETING)
    configs = {"mutating" if kind == MUTATING else "validating": [configuration(kind, "c", entry)]}
    finalizer_removed = attributes("UPDATE", obj=deleting(vm("vm1")), old_obj=deleting(vm("vm1")))
    await run(finalizer_removed, **configs)  # the webhook down or refusing cannot hold up the deletion
    assert hook.calls == []
    with pytest.raises(AdmissionError, match="no"):
        await run(attributes("UPDATE", obj=vm("vm1"), old_obj=vm("vm1")), **configs)
    assert len(hook.calls) == 1


NO_SPEC = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
           "metadata": {"name": "vm1", "namespace": "default"}}
UNGUARDED = {"name": "x", "expression": "has(object.spec.template.metadata)"}


async def test_a_match_condition_that_fails_to_evaluate_under_fail_refuses_the_write(hook: ScriptedWebhook) -> None:
    entry = webhook("gated", hook.url("allow"), hook.ca_bundle, failure_policy="Fail", matchConditions=[UNGUARDED])
    with pytest.raises(StatusError) as caught:
        await run(attributes(obj=NO_SPEC), validating=[configuration(VALIDATING, "v", entry)])
    # kube-apiserver v1.36.2 answers exactly this (a missing field without a has() guard): NewForbidden
    assert caught.value.to_status() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "virtualmachines.kubevirt.io \"vm1\" is forbidden: expression "
                   "'has(object.spec.template.metadata)' resulted in error: no such key: spec",
        "reason": "Forbidden", "details": {"name": "vm1", "group": "kubevirt.io", "kind": "virtualmachines"},
        "code": 403}
    assert hook.calls == []


async def test_a_match_condition_that_fails_to_evaluate_under_ignore_skips_the_webhook(hook: ScriptedWebhook) -> None:
    entry = webhook("gated", hook.url("deny", code=403, message="no"), hook.ca_bundle, failure_policy="Ignore",
                    matchConditions=[UNGUARDED])
    await run(attributes(obj=NO_SPEC), validating=[configuration(VALIDATING, "v", entry)])
    assert hook.calls == []


async def test_a_false_match_condition_wins_over_one_that_fails_to_evaluate(hook: ScriptedWebhook) -> None:
    entry = webhook("gated", hook.url("allow"), hook.ca_bundle, failure_policy="Fail",
                    matchConditions=[UNGUARDED, {"name": "never", "expression": "false"}])
    await run(attributes(obj=NO_SPEC), validating=[configuration(VALIDATING, "v", entry)])
    assert hook.calls == []


def with_interfaces(obj: dict[str, Any], *interfaces: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(obj)
    changed["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = list(interfaces)
    return changed


@pytest.mark.parametrize(("operation", "old_macs", "new_macs", "called"), [
    ("CREATE", None, ["02:00:00:00:00:01"], True),  # oldObject is null: `||` short-circuits past it
    ("UPDATE", ["02:00:00:00:00:01"], ["02:00:00:00:00:01"], False),
    ("UPDATE", ["02:00:00:00:00:01"], ["02:00:00:00:00:02"], True),
    ("UPDATE", [], ["02:00:00:00:00:02"], True),
])
async def test_full_cel_macros_request_and_lists(hook: ScriptedWebhook, operation: str, old_macs: list[str] | None,
                                                 new_macs: list[str], called: bool) -> None:
    condition = {"name": "changed", "expression": "request.operation == 'CREATE' || "
                 "object.spec.template.spec.domain.devices.interfaces != "
                 "oldObject.spec.template.spec.domain.devices.interfaces && "
                 "object.spec.template.spec.domain.devices.interfaces.all(i, has(i.macAddress))"}
    entry = webhook("gated", hook.url("allow"), hook.ca_bundle, matchConditions=[condition])
    new = with_interfaces(vm("vm1"), *({"name": f"n{i}", "macAddress": mac} for i, mac in enumerate(new_macs)))
    old = None if old_macs is None else with_interfaces(vm("vm1"), *({"name": f"n{i}", "macAddress": mac}
                                                                      for i, mac in enumerate(old_macs)))
    await run(attributes(operation, obj=new, old_obj=old), validating=[configuration(VALIDATING, "v", entry)])
    assert len(hook.calls) == (1 if called else 0)


# ------------------------------------------------------------------------------ dry run, sideEffects

@pytest.mark.parametrize("kind", [MUTATING, VALIDATING])
async def test_a_false_match_condition_skips_a_webhook_with_side_effects_on_dry_run(hook: ScriptedWebhook,
                                                                                  kind: str) -> None:
    """kube-apiserver evaluates match conditions before it checks sideEffects against a dry run."""
    entry = webhook("effects", hook.url("allow"), hook.ca_bundle, side_effects="Some",
                    matchConditions=[{"name": "never", "expression": "false"}])
    configs = {"mutating" if kind == MUTATING else "validating": [configuration(kind, "c", entry)]}
    await run(attributes(dry_run=True), **configs)
    assert hook.calls == []


@pytest.mark.parametrize("side_effects", ["Some", "Unknown"])
async def test_dry_run_refused_by_a_webhook_with_side_effects(hook: ScriptedWebhook, side_effects: str) -> None:
    config = configuration(VALIDATING, "v", webhook("effects", hook.url("allow"), hook.ca_bundle,
                                                    side_effects=side_effects))
    with pytest.raises(StatusError) as caught:
        await run(attributes(dry_run=True), validating=[config])
    assert (caught.value.code, caught.value.reason) == (400, "BadRequest")
    assert caught.value.message == 'admission webhook "effects" does not support dry run'
    assert hook.calls == []
    await run(attributes(dry_run=False), validating=[config])  # without dry run it is simply called
    assert len(hook.calls) == 1


@pytest.mark.parametrize("side_effects", ["None", "NoneOnDryRun"])
async def test_dry_run_reaches_webhooks_without_side_effects(hook: ScriptedWebhook, side_effects: str) -> None:
    config = configuration(MUTATING, "m", webhook("safe", hook.url("patch", label="a", value="b"), hook.ca_bundle,
                                                  side_effects=side_effects))
    result = await run(attributes(dry_run=True), [config])
    (_, sent), = hook.calls
    assert sent["dryRun"] is True
    assert result.obj["metadata"]["labels"] == {"a": "b"}
