"""Hypothesis throws arbitrary JSON and arbitrary VM-shaped objects at both endpoints over TLS.

Whatever arrives, no exception escapes: every answer is a valid AdmissionReview
(a patch that applies to the object it was computed for) or a clear 4xx. The
server runs in its own thread and event loop so that hypothesis can drive it
with a plain keep-alive HTTPS client.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nichotplug.certs import make_bundle, write_bundle
from nichotplug.rules.cluster import StaticCluster
from nichotplug.service import build_webhook_app
from nichotplug.webhook.http import MUTATION_PATH, VALIDATION_PATH
from nichotplug.webhook.tls import CertReloader

from .webhook_support import admission_review, check_review, decode_patch

# The VM-shaped objects are where the rules are exercised; garbage bodies stop at the codec.
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_VMS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class ThreadedTlsServer:
    """An aiohttp app over TLS in a background thread; ``port`` once started."""

    def __init__(self, app: web.Application, context: ssl.SSLContext) -> None:
        self.port = 0
        self._app = app
        self._context = context
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, access_log=None)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    async def _start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._context).start()
        self.port = self._runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


class Client:
    """A keep-alive HTTPS client verifying the test CA; reconnects if the server closed the connection."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self._port = port
        self._context = context
        self._connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)

    def post(self, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        self._connection.request("POST", path, body=body, headers={"Content-Type": content_type})
        response = self._connection.getresponse()
        data = response.read()
        if response.will_close:
            self._connection.close()
        return response.status, json.loads(data)


def _nad(name: str, namespace: str, cni_type: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"network.harvesterhci.io/clusternetwork": "mgmt"}},
        "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": cni_type, "name": name})},
    }


def _cluster() -> StaticCluster:
    other = {
        "metadata": {"name": "other", "namespace": "default"},
        "spec": {"template": {"spec": {
            "domain": {"devices": {"interfaces": [{"name": "default", "macAddress": "02:00:00:00:00:aa",
                                                   "bridge": {}}]}},
            "networks": [{"name": "default", "multus": {"networkName": "default/vlan1"}}],
        }}},
    }
    running = {
        "metadata": {"name": "vm1", "namespace": "default"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    return StaticCluster(
        vms=[other], vmis=[running],
        nads=[_nad("vlan1", "default", "bridge"), _nad("ovn", "default", "kube-ovn"),
              _nad("mig", "harvester-system", "bridge")],
    )


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    folder: Path = tmp_path_factory.mktemp("fuzz-certs")
    bundle = make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    write_bundle(bundle, folder)
    tls = CertReloader(folder / "tls.crt", folder / "tls.key")
    assert tls.reload()
    server = ThreadedTlsServer(build_webhook_app(_cluster()), tls.context)
    server.start()
    # Every request's log line is built and formatted too: a logging bug must show up here as well.
    webhook_log = logging.getLogger("nichotplug.webhook")
    previous_level = webhook_log.level
    webhook_log.setLevel(logging.DEBUG)
    yield Client(server.port, ssl.create_default_context(cadata=bundle.ca_cert_pem.decode()))
    webhook_log.setLevel(previous_level)
    server.stop()


# ---------------------------------------------------------------- strategies


def as_json(value: Any) -> bytes:
    """JSON text of ``value``; an infinite float is written as a number beyond a double (``1e400``)."""
    return json.dumps(value).replace("Infinity", "1e400").encode()


# Numbers of any size: beyond a double's range the codec reads them as infinity or a big int.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
names = st.sampled_from(["default", "nic-1", "nic-2", "dyn1"]) | st.text(max_size=6)
well_formed_macs = st.builds(
    lambda raw, sep, upper: sep.join(f"{b:02X}" if upper else f"{b:02x}" for b in raw),
    st.binary(min_size=6, max_size=6), st.sampled_from([":", "-"]), st.booleans(),
)
plausible_macs = well_formed_macs | st.sampled_from(
    ["02:00:00:00:00:aa", "01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00", "zz:zz:zz:zz:zz:zz"]
)
any_macs = plausible_macs | st.text(max_size=17) | json_values


def interfaces(mac: st.SearchStrategy[Any], leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"name": st.sampled_from(["default", "nic-1", "nic-2", "dyn1"])},
        optional={
            "macAddress": mac,
            "model": st.sampled_from(["virtio", "e1000", ""]) | leaf,
            "bridge": st.just({}), "masquerade": st.just({}), "sriov": st.just({}),
            "state": st.sampled_from(["absent", "up"]) | leaf,
        },
    )


networks = st.fixed_dictionaries(
    {"name": st.sampled_from(["default", "nic-1", "nic-2", "dyn1"])},
    optional={
        "pod": st.just({}),
        "multus": st.fixed_dictionaries({"networkName": st.sampled_from(
            ["vlan1", "default/vlan1", "harvester-system/mig", "ovn", "missing", "a/b/c", ""])}),
    },
)
annotations = st.dictionaries(
    st.sampled_from(["harvesterhci.io/mac-address", "note"]),
    st.dictionaries(names, any_macs, max_size=3).map(json.dumps) | st.text(max_size=20),
    max_size=2,
)


def template_specs(mac: st.SearchStrategy[Any], leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "domain": st.fixed_dictionaries(
            {"devices": st.fixed_dictionaries({"interfaces": st.lists(interfaces(mac, leaf), max_size=5)})},
            optional={"memory": st.fixed_dictionaries({"guest": st.sampled_from(["1Gi", "4Gi", "x"])})},
        ),
        "networks": st.lists(networks, max_size=5),
    }, optional={"nodeSelector": st.dictionaries(st.sampled_from(["kubernetes.io/hostname", "zone"]),
                                                 st.text(max_size=5))})


def vm_objects_with(spec: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "apiVersion": st.just("kubevirt.io/v1"),
        "kind": st.just("VirtualMachine"),
        "metadata": st.fixed_dictionaries(
            {"name": st.just("vm1"), "namespace": st.just("default")},
            optional={
                "labels": st.dictionaries(st.sampled_from(["harvesterhci.io/creator", "app"]),
                                          st.sampled_from(["docker-machine-driver-harvester", "x"])),
                "annotations": annotations,
                "resourceVersion": st.sampled_from(["1", "2"]),
            },
        ),
        "spec": spec,
    }, optional={"status": st.fixed_dictionaries({"printableStatus": st.sampled_from(["Running", "Stopped"])})})


# Mostly well-formed VMs with plausible values (where the rules decide something), some with any JSON
# at the leaves, some with any JSON anywhere in the spec.
plausible_specs = st.fixed_dictionaries(
    {"template": st.fixed_dictionaries({"spec": template_specs(plausible_macs, st.nothing())})},
    optional={"runStrategy": st.sampled_from(["Always", "Halted", "RerunOnFailure", "Manual"])},
)
odd_specs = st.fixed_dictionaries(
    {"template": st.fixed_dictionaries({"spec": template_specs(any_macs, json_values)})},
    optional={"runStrategy": json_values, "running": json_values},
)
vm_objects = vm_objects_with(plausible_specs) | vm_objects_with(odd_specs) | vm_objects_with(json_values)


def _check_answer(webhook: str, status: int, answer: Any, obj: Any) -> None:
    assert status == 200, answer
    response = check_review(answer, uid="uid-1", webhook=webhook)
    assert response.get("status", {}).get("code") != 500, f"a rule crashed: {response}"
    if "patch" in response:
        ops = decode_patch(response["patch"])
        assert all(op["op"] == "add" for op in ops)
        jsonpatch.apply_patch(obj, ops)  # raises if the patch does not apply to what it was computed for


# ---------------------------------------------------------------- the fuzz tests


@FUZZ
@given(body=json_values)
def test_arbitrary_json_gets_a_clear_400(client: Client, body: Any) -> None:
    for path in (MUTATION_PATH, VALIDATION_PATH):
        status, answer = client.post(path, as_json(body))
        assert status == 400
        assert answer["kind"] == "Status"
        assert answer["message"]


@FUZZ
@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_get_a_clear_400(client: Client, raw: bytes) -> None:
    for path in (MUTATION_PATH, VALIDATION_PATH):
        status, answer = client.post(path, raw)
        assert status == 400
        assert answer["message"]


@FUZZ
@given(request=st.dictionaries(
    st.sampled_from(["uid", "kind", "resource", "operation", "userInfo", "object", "oldObject", "dryRun",
                     "name", "namespace", "subResource"]),
    json_values, max_size=8))
def test_arbitrary_request_fields_get_a_review_or_a_clear_400(client: Client, request: dict[str, Any]) -> None:
    review = admission_review(None)
    review["request"].update(request)
    body = as_json(review)
    for webhook, path in (("mutation", MUTATION_PATH), ("validation", VALIDATION_PATH)):
        status, answer = client.post(path, body)
        if status == 400:
            assert answer["kind"] == "Status"
            assert answer["message"]
        else:
            assert status == 200
            uid = review["request"]["uid"]
            check_review(answer, uid=uid, webhook=webhook)


@FUZZ_VMS
@given(obj=vm_objects, old=st.none() | vm_objects_with(plausible_specs),
       operation=st.sampled_from(["CREATE", "UPDATE"]), dry_run=st.booleans())
def test_vm_shaped_objects_always_get_a_valid_review(
    client: Client, obj: dict[str, Any], old: dict[str, Any] | None, operation: str, dry_run: bool
) -> None:
    body = as_json(admission_review(obj, operation=operation, oldObject=old, dryRun=dry_run))
    for webhook, path in (("mutation", MUTATION_PATH), ("validation", VALIDATION_PATH)):
        status, answer = client.post(path, body)
        _check_answer(webhook, status, answer, obj)
