"""The plugin's commands through the subresource API (``subresources.nichotplug.io/v1``), via kube-apiserver.

kube-apiserver authorises each call on the subresource (``nichotplug-nic-operator`` grants the four)
and proxies it to nichotplug, which runs the one action flow with its own account. A refusal comes
back as a ``metav1.Status``; nichotplug puts its machine-readable code in ``details.causes[0].reason``,
so the plugin shows the same hints as on the direct path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions.apidocs import ADD_NIC, GROUP_VERSION, HOTPLUG_CHECK, HOTUNPLUGGABLE_NICS, REMOVE_NIC, RESOURCE
from nichotplug.actions.flow import CLUSTER_UNAVAILABLE, ActionFailed, ActionResult
from nichotplug.actions.report import print_written
from nichotplug.kube.patch import RawAnswer, request_json
from nichotplug.rules.nic_plans import ActionRefusal


async def availability(api: ApiClient) -> str | None:
    """None when kube-apiserver serves the subresource API now, else why not (for ``-v``).

    Discovery of the group version is open to every authenticated user; kube-apiserver answers 503
    while the APIService is not Available and 404 when there is none.
    """
    try:
        answer = await request_json(api, "GET", f"/apis/{GROUP_VERSION}")
    except (aiohttp.ClientError, TimeoutError) as error:
        return f"could not ask for it ({error or type(error).__name__})"
    resources = answer.body.get("resources") if isinstance(answer.body, dict) else None
    names = {item.get("name") for item in resources or () if isinstance(item, dict)}
    if answer.status == 200 and f"{RESOURCE}/{ADD_NIC.name}" in names:
        return None
    return f"HTTP {answer.status} for /apis/{GROUP_VERSION}"


def _refusal(answer: RawAnswer) -> ActionRefusal:
    status: Mapping[str, Any] = answer.body if isinstance(answer.body, dict) else {}
    causes = (status.get("details") or {}).get("causes") or [{}]
    code = str(causes[0].get("reason") or status.get("reason") or "ServerError")
    message = str(status.get("message") or f"HTTP {answer.status} from the subresource API")
    return ActionRefusal(answer.status or 502, code, message)


async def call(api: ApiClient, namespace: str, vm: str, subresource: str, body: Any = None) -> dict[str, Any]:
    """One subresource call; its JSON answer, or :class:`ActionFailed` with the Status it refused with."""
    method = "POST" if subresource in (ADD_NIC.name, REMOVE_NIC.name) else "GET"
    path = f"/apis/{GROUP_VERSION}/namespaces/{namespace}/{RESOURCE}/{vm}/{subresource}"
    try:
        answer = await request_json(api, method, path, body)
    except (aiohttp.ClientError, TimeoutError) as error:
        reason = str(error) or type(error).__name__
        raise ActionFailed(ActionRefusal(
            503, CLUSTER_UNAVAILABLE, f"the Kubernetes API server could not be reached: {reason}")) from error
    if answer.status != 200 or not isinstance(answer.body, dict):
        raise ActionFailed(_refusal(answer))
    return answer.body


def report_interface(answer: Mapping[str, Any], verb: str, vm_ref: str, out: TextIO, err: TextIO) -> None:
    """What add-nic / remove-nic print from the subresource's answer: the direct path's words."""
    interface = answer.get("interface") or {}
    result = ActionResult(
        interface=str(interface.get("name", "")), mac=str(interface.get("macAddress", "")),
        network=str(interface.get("networkName", "")), migration=answer.get("migration") or None,
        migration_pending=bool(answer.get("migrationPending")), migration_error=answer.get("migrationError"),
        stopped=bool(answer.get("vmStopped")))
    print_written(result, vm_ref, out, err, added=verb == "added")


def report_check(answer: Mapping[str, Any], vm_ref: str, out: TextIO) -> bool:
    """The ``check`` output from ``hotplugcheck``; True when the VM is eligible."""
    if answer.get("eligible"):
        print(f"VM {vm_ref} is eligible for NIC hot-plug and hot-unplug "
              f"({answer.get('hotplugPortsLeft')} hot-plug ports left)", file=out)
        return True
    print(f"VM {vm_ref} is not eligible for NIC hot-plug:", file=out)
    for reason in answer.get("reasons") or ():
        print(f"  - {reason.get('message')}", file=out)
    return False


async def run_remote(command: str, api: ApiClient, namespace: str, vm: str, options: Mapping[str, Any],
                     out: TextIO, err: TextIO) -> bool:
    """Run ``command`` through the subresources; False when the command reports a refusal (``check``)."""
    vm_ref = f"{namespace}/{vm}"
    if command == "add-nic":
        body = {key: value for key, value in (("interfaceName", options.get("interface")),
                                              ("networkName", options.get("network")),
                                              ("macAddress", options.get("mac"))) if value}
        report_interface(await call(api, namespace, vm, ADD_NIC.name, body), "added", vm_ref, out, err)
    elif command == "remove-nic":
        answer = await call(api, namespace, vm, REMOVE_NIC.name, {"interfaceName": options.get("interface")})
        report_interface(answer, "unplugged", vm_ref, out, err)
    elif command == "check":
        return report_check(await call(api, namespace, vm, HOTPLUG_CHECK.name), vm_ref, out)
    else:  # list
        names = (await call(api, namespace, vm, HOTUNPLUGGABLE_NICS.name)).get("interfaces") or []
        print("HOT-UNPLUGGABLE INTERFACES", file=out)
        for name in names:
            print(name, file=out)
        if not names:
            print("(none)", file=out)
        report_check(await call(api, namespace, vm, HOTPLUG_CHECK.name), vm_ref, out)
    return True
