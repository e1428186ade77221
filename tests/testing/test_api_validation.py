"""Custom resources checked against their CRD's openAPIV3Schema: 422 causes, pruning, Strict and Warn."""

from __future__ import annotations

from typing import Any

import pytest

from nichotplug.testing import ApiServer
from nichotplug.testing.validation import SchemaValidator, to_json_schema

from .api_support import MERGE, VMS, RawClient, vm

WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1},
                "mode": {"type": "string", "enum": ["a", "b"]},
                "port": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "since": {"type": "string", "format": "date-time"},
                "count": {"type": "integer", "format": "int32"},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "tags": {"type": "object", "additionalProperties": {"type": "string"}},
                "items": {"type": "array", "items": {"type": "object", "properties": {"n": {"type": "string"}}}},
            },
        },
    },
}



def test_schema_translation_handles_kubernetes_extensions() -> None:
    translated = to_json_schema(WIDGET_SCHEMA)["properties"]["spec"]["properties"]
    assert translated["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert translated["note"] == {"type": ["string", "null"]}
    assert "x-kubernetes-preserve-unknown-fields" not in translated["free"]


@pytest.mark.parametrize(("spec", "field", "reason"), [
    ({}, "spec.size", "FieldValueRequired"),
    ({"size": "big"}, "spec.size", "FieldValueTypeInvalid"),
    ({"size": 0}, "spec.size", "FieldValueInvalid"),
    ({"size": 1, "mode": "c"}, "spec.mode", "FieldValueNotSupported"),
    ({"size": 1, "port": 1.5}, "spec.port", "FieldValueInvalid"),
    ({"size": 1, "tags": {"a": 1}}, "spec.tags.a", "FieldValueTypeInvalid"),
    ({"size": 1, "since": "yesterday"}, "spec.since", "FieldValueInvalid"),
])
def test_schema_violations_become_field_causes(spec: dict[str, Any], field: str, reason: str) -> None:
    causes = SchemaValidator(WIDGET_SCHEMA).causes({"spec": spec})
    assert [(c["field"], c["reason"]) for c in causes] == [(field, reason)]


def test_go_inline_case_flag_in_a_pattern_is_honoured() -> None:
    # Go's regexp takes "(?i)" mid-pattern (the PrometheusRule CRD has one); the API server accepts the CRD.
    schema = {"type": "object", "properties": {"mode": {"type": "string", "pattern": "^(?i)(abort|warn)?$"}}}
    validator = SchemaValidator(schema)
    assert validator.causes({"mode": "ABORT"}) == []
    assert validator.causes({"mode": "Warn"}) == []
    assert [cause["field"] for cause in validator.causes({"mode": "maybe"})] == ["mode"]


def test_valid_values_pass() -> None:
    spec = {"size": 2, "mode": "a", "port": "http", "note": None, "free": {"x": [1]}, "tags": {"a": "b"},
            "since": "2026-11-28T06:00:00Z", "count": 3}
    assert SchemaValidator(WIDGET_SCHEMA).causes({"spec": spec}) == []


def test_date_time_format_message() -> None:
    causes = SchemaValidator(WIDGET_SCHEMA).causes({"spec": {"size": 1, "since": "yesterday"}})
    assert causes[0]["message"] == (
        'Invalid value: "yesterday": spec.since in body must be of type date-time: "yesterday"')


def test_pruning_drops_undeclared_fields_and_reports_them() -> None:
    obj = {"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w", "colour": "red"}, "extra": 1,
           "spec": {"size": 1, "bogus": True, "free": {"kept": 1}, "items": [{"n": "a", "z": 2}]}}
    unknown = SchemaValidator(WIDGET_SCHEMA).prune(obj)
    assert unknown == ["metadata.colour", "extra", "spec.bogus", "spec.items[0].z"]
    assert obj == {"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
                   "spec": {"size": 1, "free": {"kept": 1}, "items": [{"n": "a"}]}}


def test_nulls_are_dropped_where_the_schema_does_not_allow_them_and_kept_where_it_does() -> None:
    schema = {"type": "object", "properties": {"spec": {
        **WIDGET_SCHEMA["properties"]["spec"],
        "properties": {**WIDGET_SCHEMA["properties"]["spec"]["properties"],
                       "level": {"type": "integer", "default": 3}}}}}
    obj = {"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
           "spec": {"size": 1, "mode": None, "note": None, "level": None, "tags": {"a": None, "b": "x"},
                    "items": [{"n": None}]}}
    assert SchemaValidator(schema).prune(obj) == []  # not unknown fields: no warning
    assert obj["spec"] == {"size": 1, "note": None, "level": 3, "tags": {"b": "x"}, "items": [{}]}


async def test_a_null_mac_reads_as_no_mac_as_on_the_real_server(raw: RawClient) -> None:
    body = vm("vm1")
    body["spec"]["runStrategy"] = None
    body["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = [
        {"name": "default", "masquerade": {}, "macAddress": None}]
    answer = await raw.call("POST", VMS, body)
    assert (answer.status, answer.warnings) == (201, [])
    assert "runStrategy" not in answer.body["spec"]
    assert answer.body["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] == [
        {"name": "default", "masquerade": {}}]


async def test_vm_without_template_is_refused_like_the_real_server(raw: RawClient, apiserver: ApiServer) -> None:
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "shape-bad", "namespace": "default"}, "spec": {"runStrategy": "Halted"}}
    answer = await raw.call("POST", VMS, body)
    assert answer.status == 422
    assert answer.body["message"].startswith('VirtualMachine.kubevirt.io "shape-bad" is invalid: [spec.template: '
                                             "Required value, <nil>: Invalid value: null: some validation rules")
    assert answer.body["details"]["causes"][0] == {"reason": "FieldValueRequired", "message": "Required value",
                                                   "field": "spec.template"}
    assert apiserver.store.count(("kubevirt.io", "virtualmachines")) == 0


async def test_invalid_patch_is_refused_and_changes_nothing(raw: RawClient) -> None:
    stored = (await raw.call("POST", VMS, vm("vm1"))).body
    answer = await raw.call("PATCH", f"{VMS}/vm1", {"spec": {"runStrategy": 7}}, content_type=MERGE)
    assert answer.status == 422
    assert answer.body["details"]["causes"][0]["field"] == "spec.runStrategy"
    assert (await raw.call("GET", f"{VMS}/vm1")).body == stored


async def test_unknown_fields_are_pruned_with_a_warning_by_default(raw: RawClient) -> None:
    body = vm("vm1")
    body["spec"]["bogus"] = 1
    answer = await raw.call("POST", VMS, body)
    assert answer.status == 201
    assert "bogus" not in answer.body["spec"]
    assert answer.warnings == ['299 - "unknown field \\"spec.bogus\\""']


async def test_strict_field_validation_rejects_unknown_fields(raw: RawClient, apiserver: ApiServer) -> None:
    body = vm("vm1")
    body["spec"]["bogus"] = 1
    answer = await raw.call("POST", f"{VMS}?fieldValidation=Strict", body)
    assert answer.status == 400
    assert answer.body["reason"] == "BadRequest"
    assert answer.body["message"].endswith('strict decoding error: unknown field "spec.bogus"')
    assert apiserver.store.count(("kubevirt.io", "virtualmachines")) == 0


async def test_ignore_field_validation_prunes_silently(raw: RawClient) -> None:
    body = vm("vm1")
    body["spec"]["bogus"] = 1
    answer = await raw.call("POST", f"{VMS}?fieldValidation=Ignore", body)
    assert answer.status == 201
    assert answer.warnings == []
    assert "bogus" not in answer.body["spec"]
