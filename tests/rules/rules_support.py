"""Builders of realistic VM, VMI and NAD dicts for the rule tests (shapes as the fixtures record them)."""

from __future__ import annotations

import json
from typing import Any

BRIDGE_CONFIG = json.dumps({"cniVersion": "0.3.1", "name": "vlan1", "type": "bridge", "bridge": "mgmt-br",
                            "promiscMode": True, "vlan": 1, "ipam": {}})
KUBE_OVN_CONFIG = json.dumps({"cniVersion": "0.3.1", "name": "ovn1", "type": "kube-ovn",
                              "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
                              "provider": "ovn1.default.ovn"})


def iface(name: str, *, binding: str = "bridge", model: str | None = "virtio", mac: str | None = None,
          state: str | None = None) -> dict[str, Any]:
    optional = {"model": model, "macAddress": mac, "state": state}
    return {"name": name, binding: {}, **{key: value for key, value in optional.items() if value is not None}}


def pod_net(name: str = "default") -> dict[str, Any]:
    return {"name": name, "pod": {}}


def multus_net(name: str, network_name: str) -> dict[str, Any]:
    return {"name": name, "multus": {"networkName": network_name}}


def default_interfaces() -> list[dict[str, Any]]:
    return [iface("default", binding="masquerade", mac="02:00:00:00:00:01"),
            iface("nic-1", mac="02:00:00:00:00:02")]


def default_networks() -> list[dict[str, Any]]:
    return [pod_net("default"), multus_net("nic-1", "default/vlan1")]


def vm(name: str = "vm1", namespace: str = "default", *, interfaces: list[dict[str, Any]] | None = None,
       networks: list[dict[str, Any]] | None = None, run_strategy: str | None = "Always",
       labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
       printable_status: str | None = "Running", node_selector: dict[str, str] | None = None,
       host_devices: bool = False, memory: str | None = "1Gi", deleting: bool = False,
       resource_version: str = "100") -> dict[str, Any]:
    devices: dict[str, Any] = {
        "disks": [{"name": "disk-0", "disk": {"bus": "virtio"}}],
        "interfaces": default_interfaces() if interfaces is None else interfaces,
    }
    if host_devices:
        devices["hostDevices"] = [{"name": "gpu0", "deviceName": "nvidia.com/GP102GL"}]
    domain: dict[str, Any] = {"cpu": {"cores": 1}, "devices": devices}
    if memory is not None:
        domain["memory"] = {"guest": memory}
    template_spec: dict[str, Any] = {
        "domain": domain,
        "networks": default_networks() if networks is None else networks,
    }
    if node_selector is not None:
        template_spec["nodeSelector"] = node_selector
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                                "resourceVersion": resource_version,
                                "labels": {"harvesterhci.io/creator": "harvester"} if labels is None else labels}
    if annotations:
        metadata["annotations"] = annotations
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-28T06:00:00Z"
    spec: dict[str, Any] = {"template": {"metadata": {"labels": {"harvesterhci.io/vmName": name}},
                                         "spec": template_spec}}
    if run_strategy is not None:
        spec["runStrategy"] = run_strategy
    obj: dict[str, Any] = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": metadata,
                           "spec": spec}
    if printable_status is not None:
        obj["status"] = {"printableStatus": printable_status}
    return obj


def vmi(name: str = "vm1", namespace: str = "default", *, phase: str = "Running", ready: bool = True,
        live_migratable: str | None = "True", migratable_reason: str = "", migration: dict[str, Any] | None = None,
        deleting: bool = False, interface_macs: dict[str, str] | None = None) -> dict[str, Any]:
    conditions: list[dict[str, Any]] = [{"type": "Ready", "status": "True" if ready else "False"}]
    if live_migratable is not None:
        condition: dict[str, Any] = {"type": "LiveMigratable", "status": live_migratable}
        if migratable_reason:
            condition["reason"] = migratable_reason
        conditions.append(condition)
    status: dict[str, Any] = {"phase": phase, "conditions": conditions}
    if migration is not None:
        status["migrationState"] = migration
    if interface_macs is not None:
        status["interfaces"] = [{"name": key, "mac": value} for key, value in interface_macs.items()]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-28T06:00:00Z"
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": metadata,
            "status": status}


def nad(name: str = "vlan1", namespace: str = "default", *, config: str = BRIDGE_CONFIG,
        cluster_network: str | None = "mgmt", network_type: str | None = "L2VlanNetwork",
        deleting: bool = False) -> dict[str, Any]:
    labels: dict[str, str] = {}
    if cluster_network is not None:
        labels["network.harvesterhci.io/clusternetwork"] = cluster_network
    if network_type is not None:
        labels["network.harvesterhci.io/type"] = network_type
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-28T06:00:00Z"
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": metadata,
            "spec": {"config": config}}
