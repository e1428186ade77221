"""Strategic merge patches of built-in objects, as kubectl apply and kubectl patch send them."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from nichotplug.testing import ApiServer
from nichotplug.testing.patching import COMMON_MERGE_LISTS, MERGE_LISTS, strategic_merge

from .api_support import RawClient

SMP = "application/strategic-merge-patch+json"
WEBHOOK_LISTS = {**COMMON_MERGE_LISTS, **MERGE_LISTS["MutatingWebhookConfiguration"]}
CONFIGS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def _hooks(*names: str) -> list[dict[str, Any]]:
    return [{"name": name, "sideEffects": "None", "admissionReviewVersions": ["v1"],
             "clientConfig": {"url": f"https://{name}:8443/"}} for name in names]



def test_list_with_merge_key_merges_by_key() -> None:
    live = {"webhooks": _hooks("a.nichotplug.test", "b.nichotplug.test")}
    patch = {"webhooks": [{"name": "b.nichotplug.test", "clientConfig": {"caBundle": "Q0E="}}]}
    merged = strategic_merge(live, patch, WEBHOOK_LISTS)
    assert [h["name"] for h in merged["webhooks"]] == ["a.nichotplug.test", "b.nichotplug.test"]
    assert merged["webhooks"][1]["clientConfig"] == {"url": "https://b.nichotplug.test:8443/", "caBundle": "Q0E="}


def test_delete_directive_and_element_order() -> None:
    live = {"webhooks": _hooks("a.nichotplug.test", "b.nichotplug.test", "c.nichotplug.test")}
    patch = {"$setElementOrder/webhooks": [{"name": "c.nichotplug.test"}, {"name": "a.nichotplug.test"}],
             "webhooks": [{"name": "b.nichotplug.test", "$patch": "delete"}]}
    merged = strategic_merge(live, patch, WEBHOOK_LISTS)
    assert [h["name"] for h in merged["webhooks"]] == ["c.nichotplug.test", "a.nichotplug.test"]


def test_match_conditions_merge_by_name_as_kubectl_apply_sends_them() -> None:
    """``matchConditions`` is a list map keyed by ``name`` (its Go tags), so ``kubectl apply`` of a changed
    list sends the changed entries, deletions and the order; element order entries are objects."""
    live = {"webhooks": [{**_hooks("a.nichotplug.test")[0], "matchConditions": [
        {"name": "x", "expression": "true"}, {"name": "y", "expression": "false"}]}]}
    patch = {"webhooks": [{"name": "a.nichotplug.test",
                           "$setElementOrder/matchConditions": [{"name": "z"}, {"name": "x"}],
                           "matchConditions": [{"name": "z", "expression": "1 == 1"},
                                               {"name": "y", "$patch": "delete"}]}]}
    merged = strategic_merge(live, patch, WEBHOOK_LISTS)
    assert merged["webhooks"][0]["matchConditions"] == [{"name": "z", "expression": "1 == 1"},
                                                        {"name": "x", "expression": "true"}]


def test_finalizers_merge_as_a_set_and_can_be_removed() -> None:
    live = {"metadata": {"finalizers": ["a", "b"]}}
    added = strategic_merge(live, {"metadata": {"finalizers": ["b", "c"]}}, WEBHOOK_LISTS)
    assert added["metadata"]["finalizers"] == ["a", "b", "c"]
    removed = strategic_merge(added, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, WEBHOOK_LISTS)
    assert removed["metadata"]["finalizers"] == ["b", "c"]


def test_lists_without_a_merge_key_are_replaced_and_null_deletes() -> None:
    live = {"rules": [{"verbs": ["get"]}, {"verbs": ["list"]}], "data": {"a": "1", "b": "2"}}
    merged = strategic_merge(live, {"rules": [{"verbs": ["watch"]}], "data": {"a": None}}, COMMON_MERGE_LISTS)
    assert merged == {"rules": [{"verbs": ["watch"]}], "data": {"b": "2"}}


def test_replace_and_retain_keys_directives() -> None:
    live = {"spec": {"a": 1, "b": {"c": 2}}}
    assert strategic_merge(live, {"spec": {"b": {"$patch": "replace", "d": 3}}}, {}) == {"spec": {"a": 1,
                                                                                                  "b": {"d": 3}}}
    assert strategic_merge(live, {"spec": {"$retainKeys": ["b"], "b": {"c": 5}}}, {}) == {"spec": {"b": {"c": 5}}}


async def test_strategic_patch_over_http_keeps_the_other_webhooks(raw: RawClient) -> None:
    config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
              "metadata": {"name": "hooks"}, "webhooks": _hooks("a.nichotplug.test", "b.nichotplug.test")}
    assert (await raw.call("POST", CONFIGS, config)).status == 201
    answer = await raw.call("PATCH", f"{CONFIGS}/hooks",
                            {"webhooks": [{"name": "a.nichotplug.test", "timeoutSeconds": 5}]}, content_type=SMP)
    assert answer.status == 200
    assert [(h["name"], h.get("timeoutSeconds")) for h in answer.body["webhooks"]] == [("a.nichotplug.test", 5),
                                                                                       ("b.nichotplug.test", None)]


@pytest.mark.kubectl
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_kubectl_apply_twice_updates_one_webhook(apiserver: ApiServer, kubeconfig: Path, tmp_path: Path,
                                                       raw: RawClient) -> None:
    config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
              "metadata": {"name": "hooks"}, "webhooks": _hooks("a.nichotplug.test", "b.nichotplug.test")}
    manifest = tmp_path / "hooks.yaml"
    for timeout in (None, 7):
        if timeout is not None:
            config["webhooks"][1]["timeoutSeconds"] = timeout
        manifest.write_text(yaml.safe_dump(config))
        process = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", str(kubeconfig), "apply", "-f", str(manifest),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, output.decode()
    stored = (await raw.call("GET", f"{CONFIGS}/hooks")).body
    assert [(h["name"], h.get("timeoutSeconds")) for h in stored["webhooks"]] == [
        ("a.nichotplug.test", None), ("b.nichotplug.test", 7)]
