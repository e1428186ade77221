"""Discovery and OpenAPI v3 documents compared with the ones recorded from kube-apiserver v1.36."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from nichotplug.testing import discovery, openapi
from nichotplug.testing.fixtures import SHARED_FIXTURES
from nichotplug.testing.resources import BUILTIN_RESOURCES, ResourceInfo, resources_from_crd

CRD_DIR = Path(__file__).resolve().parents[2] / "nichotplug" / "testing" / "crds"
KUBECTL_FIXTURES = SHARED_FIXTURES / "kubectl"
APISERVER_FIXTURES = SHARED_FIXTURES / "apiserver"

needs_fixtures = pytest.mark.skipif(not KUBECTL_FIXTURES.is_dir(), reason="recorded fixtures not on this machine")


def _recorded(path: Path) -> Any:
    return json.loads(path.read_text())


def _crds() -> list[dict[str, Any]]:
    return [doc for path in sorted(CRD_DIR.glob("*.yaml"))
            for doc in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader) if doc]


@pytest.fixture(scope="module")
def served() -> list[ResourceInfo]:
    """What a server with the shipped CRDs installed serves."""
    return [*BUILTIN_RESOURCES, *(info for crd in _crds() for info in resources_from_crd(crd))]


# ------------------------------------------------------------------------------------- discovery

@needs_fixtures
def test_kubevirt_resource_list_is_the_recorded_one(served: list[ResourceInfo]) -> None:
    assert discovery.resource_list(served, "kubevirt.io", "v1") == _recorded(
        KUBECTL_FIXTURES / "get_apis_kubevirt.io_v1.json"
    )


@needs_fixtures
def test_core_resource_list_entries_match_the_recorded_ones(served: list[ResourceInfo]) -> None:
    recorded = _recorded(KUBECTL_FIXTURES / "get_api_v1.json")
    ours = discovery.resource_list(served, "", "v1")
    assert ours is not None
    assert {key: value for key, value in ours.items() if key != "resources"} == {
        key: value for key, value in recorded.items() if key != "resources"
    }
    recorded_by_name = {entry["name"]: entry for entry in recorded["resources"]}
    for entry in ours["resources"]:
        expected = recorded_by_name[entry["name"]]
        # Namespaces have no deletecollection verb in the real server; everything else must agree.
        for key in ("singularName", "namespaced", "kind", "shortNames", "storageVersionHash"):
            assert entry.get(key) == expected.get(key), (entry["name"], key)


@needs_fixtures
def test_group_list_has_the_recorded_shape_for_served_groups(served: list[ResourceInfo]) -> None:
    recorded = _recorded(KUBECTL_FIXTURES / "get_apis.json")
    ours = discovery.group_list(served)
    assert (ours["kind"], ours["apiVersion"]) == (recorded["kind"], recorded["apiVersion"])
    recorded_groups = {group["name"]: group for group in recorded["groups"]}
    assert [group["name"] for group in ours["groups"]].count("kubevirt.io") == 1
    for group in ours["groups"]:
        assert group == recorded_groups[group["name"]], group["name"]


@needs_fixtures
def test_version_has_the_keys_of_the_real_server() -> None:
    recorded = _recorded(APISERVER_FIXTURES / "31-version.json")["response"]["body"]
    ours = discovery.version()
    assert list(ours) == list(recorded)
    assert (ours["major"], ours["minor"]) == (recorded["major"], recorded["minor"])


@needs_fixtures
def test_core_versions_match_the_recorded_answer() -> None:
    recorded = _recorded(KUBECTL_FIXTURES / "get_api.json")
    assert discovery.core_versions(server_address="127.0.0.1:6443") == recorded
    assert discovery.core_versions() == {"kind": "APIVersions", "versions": ["v1"]}


def test_group_document_prefers_the_storage_version(served: list[ResourceInfo]) -> None:
    kubevirt = discovery.group(served, "kubevirt.io")
    assert kubevirt is not None
    assert kubevirt["kind"] == "APIGroup"
    assert [entry["version"] for entry in kubevirt["versions"]] == ["v1", "v1alpha3"]
    assert kubevirt["preferredVersion"] == {"groupVersion": "kubevirt.io/v1", "version": "v1"}


def test_a_newer_non_storage_version_is_listed_first_but_not_preferred() -> None:
    crd = {"spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "kind": "Widget"},
                    "versions": [{"name": "v1beta1", "served": True, "storage": True},
                                 {"name": "v2", "served": True, "storage": False},
                                 {"name": "v1alpha1", "served": True, "storage": False}]}}
    document = discovery.group(resources_from_crd(crd), "example.com")
    assert document is not None
    assert [entry["version"] for entry in document["versions"]] == ["v2", "v1beta1", "v1alpha1"]
    assert document["preferredVersion"]["version"] == "v1beta1"


def test_unknown_groups_and_versions_are_not_found(served: list[ResourceInfo]) -> None:
    assert discovery.group(served, "nothing.example.com") is None
    assert discovery.group(served, "") is None
    assert discovery.resource_list(served, "kubevirt.io", "v9") is None
    assert discovery.resource_list(served, "", "v2") is None


def test_a_new_crd_is_discoverable_at_once(served: list[ResourceInfo]) -> None:
    crd = {"spec": {"group": "example.com", "scope": "Cluster",
                    "names": {"plural": "gizmos", "kind": "Gizmo", "shortNames": ["gz"]},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "subresources": {"status": {}}}]}}
    resources = [*served, *resources_from_crd(crd)]
    listed = discovery.resource_list(resources, "example.com", "v1")
    assert listed is not None
    assert [entry["name"] for entry in listed["resources"]] == ["gizmos", "gizmos/status"]
    assert listed["resources"][0]["namespaced"] is False
    assert listed["resources"][0]["shortNames"] == ["gz"]
    assert "example.com" in [group["name"] for group in discovery.group_list(resources)["groups"]]


# --------------------------------------------------------------------------------------- OpenAPI

@needs_fixtures
def test_kubevirt_document_has_every_recorded_path_and_operation(served: list[ResourceInfo]) -> None:
    recorded = _recorded(KUBECTL_FIXTURES / "get_openapi_v3_apis_kubevirt.io_v1.skeleton.json")
    ours = openapi.v3_document(served, "kubevirt.io", "v1")
    assert ours is not None
    assert ours["openapi"] == recorded["openapi"]
    assert set(ours["paths"]) == set(recorded["paths"])
    for path, recorded_item in recorded["paths"].items():
        our_item = ours["paths"][path]
        assert set(our_item) == set(recorded_item), path
        for method, recorded_operation in recorded_item.items():
            names = [parameter["name"] for parameter in (recorded_operation if method == "parameters"
                                                          else recorded_operation.get("parameters", []))]
            ours_operation = our_item[method]
            our_names = [parameter["name"] for parameter in (ours_operation if method == "parameters"
                                                              else ours_operation.get("parameters", []))]
            assert our_names == names, (path, method)
            if method == "parameters":
                continue
            for key in ("operationId", "x-kubernetes-action", "x-kubernetes-group-version-kind"):
                assert ours_operation[key] == recorded_operation[key], (path, method, key)


@needs_fixtures
def test_kubevirt_document_has_the_recorded_schemas(served: list[ResourceInfo]) -> None:
    recorded = _recorded(KUBECTL_FIXTURES / "get_openapi_v3_apis_kubevirt.io_v1.skeleton.json")
    ours = openapi.v3_document(served, "kubevirt.io", "v1")
    assert ours is not None
    schemas = ours["components"]["schemas"]
    assert set(schemas) == set(recorded["components"]["schemas"])
    for name, recorded_schema in recorded["components"]["schemas"].items():
        assert schemas[name]["type"] == recorded_schema["type"], name
        assert sorted(schemas[name].get("properties") or {}) == sorted(recorded_schema["properties"]), name
        if recorded_schema["x-kubernetes-group-version-kind"] and name.startswith("io.kubevirt"):
            assert schemas[name]["x-kubernetes-group-version-kind"] == recorded_schema[
                "x-kubernetes-group-version-kind"]


def test_crd_schema_is_served_with_typed_metadata(served: list[ResourceInfo]) -> None:
    document = openapi.v3_document(served, "kubevirt.io", "v1")
    assert document is not None
    vm = document["components"]["schemas"]["io.kubevirt.v1.VirtualMachine"]
    assert vm["properties"]["metadata"]["allOf"] == [
        {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]
    # the CRD's own field definitions are there, e.g. the runStrategy of the spec
    assert "runStrategy" in vm["properties"]["spec"]["properties"]
    assert vm["required"] == ["spec"]


def test_patch_operation_offers_field_validation_but_no_strategic_merge_for_a_crd(
        served: list[ResourceInfo]) -> None:
    # kubectl checks exactly this before `apply`/`edit`: fieldValidation support and whether to
    # send a strategic merge patch.
    document = openapi.v3_document(served, "kubevirt.io", "v1")
    assert document is not None
    patch = document["paths"]["/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}"]["patch"]
    assert "fieldValidation" in [parameter["name"] for parameter in patch["parameters"]]
    assert "application/strategic-merge-patch+json" not in patch["requestBody"]["content"]
    assert "application/merge-patch+json" in patch["requestBody"]["content"]


def test_core_document_covers_secrets_which_kubectl_checks_for_namespaces(served: list[ResourceInfo]) -> None:
    document = openapi.v3_document(served, "", "v1")
    assert document is not None
    secret_patch = document["paths"]["/api/v1/namespaces/{namespace}/secrets/{name}"]["patch"]
    assert secret_patch["x-kubernetes-group-version-kind"] == {"group": "", "version": "v1", "kind": "Secret"}
    assert "/api/v1/namespaces/{name}/status" in document["paths"]
    assert document["components"]["schemas"]["io.k8s.api.core.v1.Namespace"]["x-kubernetes-group-version-kind"] == [
        {"group": "", "kind": "Namespace", "version": "v1"}]
    leases = openapi.v3_document(served, "coordination.k8s.io", "v1")
    assert leases is not None
    assert "io.k8s.api.coordination.v1.Lease" in leases["components"]["schemas"]


def test_every_reference_resolves(served: list[ResourceInfo]) -> None:
    for group, version in {(info.group, info.version) for info in served}:
        document = openapi.v3_document(served, group, version)
        assert document is not None
        text = json.dumps(document)
        for fragment in text.split('"$ref": "#/components/schemas/')[1:]:
            assert fragment.split('"')[0] in document["components"]["schemas"], (group, version)


def test_index_lists_every_group_version_with_a_hash_that_follows_content(served: list[ResourceInfo]) -> None:
    index = openapi.v3_index(served)["paths"]
    assert set(index) >= {"api/v1", "apis/kubevirt.io/v1", "apis/kubevirt.io/v1alpha3",
                          "apis/k8s.cni.cncf.io/v1", "apis/coordination.k8s.io/v1"}
    url = index["apis/kubevirt.io/v1"]["serverRelativeURL"]
    path, _, digest = url.partition("?hash=")
    assert path == "/openapi/v3/apis/kubevirt.io/v1"
    assert len(digest) == 128
    assert digest == digest.upper()
    assert openapi.v3_index(served)["paths"]["apis/kubevirt.io/v1"]["serverRelativeURL"] == url

    changed = [info for info in served if info.kind != "VirtualMachineInstanceMigration"]
    assert openapi.v3_index(changed)["paths"]["apis/kubevirt.io/v1"]["serverRelativeURL"] != url
    assert openapi.v3_index(changed)["paths"]["api/v1"] == index["api/v1"]


def test_unknown_group_version_has_no_document(served: list[ResourceInfo]) -> None:
    assert openapi.v3_document(served, "kubevirt.io", "v2") is None
    assert openapi.v3_document(served, "nothing.example.com", "v1") is None


# --------------------------------------------------------------------------- aggregated discovery

KUBECTL_DISCOVERY_ACCEPT = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
                            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
                            "application/json")


@pytest.mark.parametrize(("accept", "aggregated"), [
    (KUBECTL_DISCOVERY_ACCEPT, True),
    ("application/json", False),
    ("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList", False),
    (None, False),
])
def test_aggregated_discovery_is_recognised_in_accept(accept: str | None, aggregated: bool) -> None:
    assert discovery.wants_aggregated(accept) is aggregated


def test_aggregated_group_discovery_carries_every_resource(served: list[ResourceInfo]) -> None:
    document = discovery.aggregated(served, core=False)
    assert (document["kind"], document["apiVersion"]) == ("APIGroupDiscoveryList", "apidiscovery.k8s.io/v2")
    kubevirt = next(item for item in document["items"] if item["metadata"].get("name") == "kubevirt.io")
    assert [version["version"] for version in kubevirt["versions"]] == ["v1", "v1alpha3"]
    v1 = kubevirt["versions"][0]
    assert v1["freshness"] == "Current"
    vms = next(entry for entry in v1["resources"] if entry["resource"] == "virtualmachines")
    assert vms == {
        "resource": "virtualmachines",
        "responseKind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
        "scope": "Namespaced",
        "singularResource": "virtualmachine",
        "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"],
        "shortNames": ["vm", "vms"],
        "categories": ["all"],
        "subresources": [{"subresource": "status", "verbs": ["get", "patch", "update"],
                          "responseKind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"}}],
    }
    vmis = next(entry for entry in v1["resources"] if entry["resource"] == "virtualmachineinstances")
    assert "subresources" not in vmis  # VMIs have no status subresource in KubeVirt's CRD
    assert [item["metadata"].get("name") for item in document["items"]] == [
        group["name"] for group in discovery.group_list(served)["groups"]]


def test_aggregated_core_discovery(served: list[ResourceInfo]) -> None:
    document = discovery.aggregated(served, core=True)
    (core,) = document["items"]
    assert "name" not in core["metadata"]
    (v1,) = core["versions"]
    namespaces = next(entry for entry in v1["resources"] if entry["resource"] == "namespaces")
    assert namespaces["scope"] == "Cluster"
    assert namespaces["shortNames"] == ["ns"]
    assert namespaces["responseKind"] == {"group": "", "version": "v1", "kind": "Namespace"}
