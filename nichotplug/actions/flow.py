"""The fetch-plan-write-migrate flow of the hot-plug actions, shared by the action API and the plugin.

1. Fresh reads with the caller's client (never a cache: the UI acts on what it just showed, and the
   caller's RBAC must decide what they may read): the VM, its VMI, and every NAD the decision needs,
   read once into a :class:`~nichotplug.rules.nic_plans.VmState`.
2. The pure planner in :mod:`nichotplug.rules.nic_plans` decides: a ``NicPlan`` (the JSON Patch, and
   the interface, MAC and network it adds or unplugs) or a refusal.
3. One JSON Patch write, starting with a ``test`` on ``metadata.resourceVersion``: a concurrent
   change makes it fail (409 for our caller) instead of being overwritten. It goes through the
   admission webhooks like any write; a denial is passed through with its code and message.
4. A ``VirtualMachineInstanceMigration`` (``generateName: <vm>-``) so the change applies now, unless
   one for the VMI is still pending (it has not started, so its target is built with this change
   too; KubeVirt would refuse a second one anyway): that one is reported instead. If the request
   fails the spec change stays (it is valid, and KubeVirt applies it at the next restart or
   migration) and an Event on the VM says why. A stopped VM gets no migration: its next start boots
   with the edited spec.
5. The report: the plan's interface, MAC and network, and the migration (or why none).

Every failure leaves as :class:`ActionFailed` carrying an :class:`ActionRefusal`, so the HTTP layer
and the plugin render the same statuses, codes and messages.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TypeVar

import aiohttp
from kubernetes_asyncio.client import ApiClient

from nichotplug.kube.listing import list_custom_objects
from nichotplug.kube.patch import (
    Conflict,
    Denied,
    KubeError,
    NotFound,
    WebhookUnreachable,
    create_custom_object,
    get_custom_object,
    json_patch,
    merge_patch,
)
from nichotplug.rules import nic_plans as plan
from nichotplug.rules.cluster import ClusterState, MacOwner, StaticCluster
from nichotplug.rules.mac import mac_text
from nichotplug.rules.nic_plans import ActionRefusal, NicPlan, VmState
from nichotplug.rules.views import InvalidObject, NadView, VmiView, VmView
from nichotplug.rules.vm_object import OBSERVED_MACS_ANNOTATION

log = logging.getLogger(__name__)
T = TypeVar("T")

KUBEVIRT: Final = ("kubevirt.io", "v1")
VMS: Final = "virtualmachines"
VMIS: Final = "virtualmachineinstances"
MIGRATIONS: Final = "virtualmachineinstancemigrations"
NAD_API: Final = ("k8s.cni.cncf.io", "v1")
NADS: Final = "network-attachment-definitions"

MIGRATION_FAILED_REASON: Final = "HotplugMigrationFailed"
ADDED_REASON: Final = "NicHotplugRequested"
UNPLUGGED_REASON: Final = "NicHotunplugRequested"
ADMISSION_DENIED: Final = "AdmissionDenied"
CLUSTER_UNAVAILABLE: Final = "ClusterUnavailable"
WEBHOOK_UNAVAILABLE: Final = "WebhookUnavailable"
# Every webhook nichotplug registers is named "<what>.nichotplug.harvesterhci.io" (webhook.registration).
OUR_WEBHOOK_SUFFIX: Final = ".nichotplug.harvesterhci.io"
_FINISHED_MIGRATION_PHASES: Final = frozenset({"Succeeded", "Failed"})


def _as_is(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


class ActionFailed(Exception):
    """The action was refused or failed; ``refusal`` holds the status, code and message to show."""

    def __init__(self, refusal: ActionRefusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


class EventSink(Protocol):
    """Where the flow reports what the caller cannot see synchronously (a failed migration request)."""

    async def emit(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> object: ...


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an action did: the interfaces found, or the migration requested (or why not)."""

    interfaces: tuple[str, ...] = ()
    interface: str = ""  # the interface added or unplugged
    mac: str = ""  # the MAC of the interface added or unplugged
    network: str = ""  # the NAD (``ns/name``) of that interface's multus network, "" for another kind
    migration: str | None = None  # name of the VirtualMachineInstanceMigration created (or found pending)
    migration_pending: bool = False  # ``migration`` was already pending: none was created
    migration_error: str | None = None  # set when the spec changed but no migration could be created
    stopped: bool = False  # the VM was stopped: its spec was edited, nothing to hot-plug or migrate


class FreshCluster:
    """A ClusterState over fresh reads, consulting the service's cache only for what we did not read.

    The VM, its VMI and the NADs it names are what the caller just read; the cache (if any) adds
    the MACs other VMs use (and those VMs' NADs, for their scope), so a clash is refused before the
    write and a generated MAC avoids every known one. The cache's copy of this VM is ignored: it may
    be older than the fresh read.
    """

    def __init__(self, fresh: StaticCluster, vm_key: tuple[str, str], read_nads: frozenset[tuple[str, str]],
                 cache: ClusterState | None) -> None:
        self._fresh = fresh
        self._vm_key = vm_key
        self._read_nads = read_nads
        self._cache = cache

    def get_vmi(self, namespace: str, name: str) -> VmiView | None:
        return self._fresh.get_vmi(namespace, name)

    def get_nad(self, namespace: str, name: str) -> NadView | None:
        found = self._fresh.get_nad(namespace, name)
        if found is not None or (namespace, name) in self._read_nads or self._cache is None:
            return found
        return self._cache.get_nad(namespace, name)

    def owners_of_mac(self, mac: str) -> Collection[MacOwner]:
        owners = set(self._fresh.owners_of_mac(mac))
        if self._cache is not None:
            owners.update(owner for owner in self._cache.owners_of_mac(mac)
                          if (owner.namespace, owner.vm) != self._vm_key)
        return frozenset(owners)

    def mac_numbers_in_use(self, numbers: Collection[int]) -> bool:
        return any(self.owners_of_mac(mac_text(number)) for number in numbers)


# "https://<service>.<namespace>.svc..." in the API server's message names where nichotplug runs.
_SERVICE_URL = re.compile(r"https://([a-z0-9-]+)\.([a-z0-9-]+)\.svc")


def webhook_unavailable(error: WebhookUnreachable) -> ActionRefusal:
    """The refusal for a write the API server could not get judged by our webhook (it is down)."""
    service = _SERVICE_URL.search(error.cause)
    pods = (f"kubectl -n {service.group(2)} get pods -l app.kubernetes.io/name=nichotplug" if service
            else "kubectl get pods -A -l app.kubernetes.io/name=nichotplug")
    return ActionRefusal(
        503, WEBHOOK_UNAVAILABLE,
        "nichotplug's admission webhook is not answering: VM writes are refused until it is back "
        f"(see its pods: {pods}). The API server said: {error.cause}",
    )


def refusal_from_kube_error(error: KubeError, what: str) -> ActionRefusal:
    """How an API error on ``what`` (e.g. "VM default/vm1") is shown to our caller."""
    if isinstance(error, WebhookUnreachable) and error.webhook.endswith(OUR_WEBHOOK_SUFFIX):
        return webhook_unavailable(error)
    if isinstance(error, Denied):
        return ActionRefusal(error.code, ADMISSION_DENIED, error.message)
    if isinstance(error, Conflict):
        return ActionRefusal(
            409, plan.CONCURRENT_CHANGE,
            f"{what} changed while this action was prepared; nothing was written, read it again and retry",
        )
    if isinstance(error, NotFound):
        return ActionRefusal(404, plan.NOT_FOUND, f"{what} not found")
    status = error.status if 400 <= error.status < 600 else 502
    return ActionRefusal(status, error.reason or "ServerError", error.message)


def vm_what(namespace: str, name: str) -> str:
    """How messages name a VM ("VM ns/name")."""
    return f"VM {namespace}/{name}"


def is_missing_vm(refusal: ActionRefusal, namespace: str, name: str) -> bool:
    """Whether ``refusal`` says the VM itself was not found (not its network, not an interface)."""
    return refusal.status == 404 and refusal.message == f"{vm_what(namespace, name)} not found"


async def _guard(what: str, call: Awaitable[T]) -> T:
    """Await ``call``; API and transport errors become :class:`ActionFailed`."""
    try:
        return await call
    except KubeError as error:
        raise ActionFailed(refusal_from_kube_error(error, what)) from error
    except (TimeoutError, aiohttp.ClientError) as error:
        reason = str(error) or type(error).__name__
        raise ActionFailed(ActionRefusal(
            503, CLUSTER_UNAVAILABLE, f"the Kubernetes API server could not be reached: {reason}",
        )) from error


async def _get_optional(api: ApiClient, api_group: tuple[str, str], plural: str, namespace: str,
                        name: str, what: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = await _guard(what, get_custom_object(api, *api_group, plural, namespace, name))
    except ActionFailed as failure:
        if failure.refusal.status == 404:
            return None
        raise
    return obj


def _referenced_nads(view: VmView) -> set[tuple[str, str]]:
    return {(network.nad_namespace, network.nad_name) for network in view.networks
            if network.kind == "multus" and network.nad_namespace and network.nad_name}


def _unreadable(namespace: str, name: str, error: InvalidObject) -> ActionFailed:
    # a stored object we cannot read: refuse rather than guess
    return ActionFailed(ActionRefusal(
        409, plan.NOT_ELIGIBLE, f"VM {namespace}/{name} or an object it uses cannot be read: {error}"))


async def read_vm_state(
    api: ApiClient, namespace: str, name: str, extra_nads: tuple[tuple[str, str], ...] = (),
    *, known_macs: ClusterState | None = None,
) -> VmState:
    """Read the VM (404 if missing), its VMI (None if missing) and the NADs it and ``extra_nads`` name.

    ``known_macs``: a cache of the rest of the cluster, asked only about other VMs' MACs.
    """
    vm: dict[str, Any] = await _guard(vm_what(namespace, name), get_custom_object(api, *KUBEVIRT, VMS, namespace, name))
    try:
        view = VmView.from_dict(vm, namespace=namespace)
    except InvalidObject as error:
        raise _unreadable(namespace, name, error) from error
    wanted = sorted(_referenced_nads(view) | set(extra_nads))
    vmi, *nads = await asyncio.gather(
        _get_optional(api, KUBEVIRT, VMIS, namespace, name, f"VMI {namespace}/{name}"),
        *(_get_optional(api, NAD_API, NADS, nad_ns, nad_name, f"network {nad_ns}/{nad_name}")
          for nad_ns, nad_name in wanted),
    )
    try:
        vmi_view = VmiView.from_dict(vmi) if vmi is not None else None
        cluster = StaticCluster(vms=[view], vmis=[vmi_view] if vmi_view is not None else [],
                                nads=[NadView.from_dict(nad) for nad in nads if nad is not None])
    except InvalidObject as error:
        raise _unreadable(namespace, name, error) from error
    return VmState(vm, view, vmi_view, FreshCluster(cluster, (namespace, name), frozenset(wanted), known_macs))


def _planned(result: NicPlan | ActionRefusal) -> NicPlan:
    if isinstance(result, ActionRefusal):
        raise ActionFailed(result)
    return result


def known_action(action: str) -> str:
    """``action`` when it is one of the actions, else :class:`ActionFailed` 400 naming them."""
    if action not in plan.ACTIONS:
        raise ActionFailed(ActionRefusal(
            400, plan.INVALID_ACTION, f"unknown action {action!r}: use one of {', '.join(plan.ACTIONS)}",
        ))
    return action


async def admission_probe(api: ApiClient, vm: Mapping[str, Any]) -> ActionRefusal | None:
    """Whether a write to ``vm`` would be refused because our webhook is not answering.

    A dry run (``dryRun=All``) of a write our validating webhook must judge: kube-apiserver sends it
    only writes that change a field it judges (its match conditions), so the probe rewrites the
    observed-MAC annotation (the same content and a trailing space, or ``{}``); nothing is stored.
    None when it passes, and also when it fails for any other reason (RBAC, a concurrent change, a
    refusal by the rules): this only tells whether the webhook answers.
    """
    metadata = vm.get("metadata") or {}
    current = (metadata.get("annotations") or {}).get(OBSERVED_MACS_ANNOTATION)
    probe = f"{current} " if isinstance(current, str) and current else "{}"
    patch = {"metadata": {"resourceVersion": metadata.get("resourceVersion", ""),
                          "annotations": {OBSERVED_MACS_ANNOTATION: probe}}}
    try:
        await merge_patch(api, *KUBEVIRT, VMS, metadata.get("namespace", ""), metadata.get("name", ""), patch,
                          dry_run=True)
    except WebhookUnreachable as error:
        return webhook_unavailable(error) if error.webhook.endswith(OUR_WEBHOOK_SUFFIX) else None
    except (KubeError, ValueError, TimeoutError, aiohttp.ClientError):
        return None
    return None


def _change_message(reason: str, user: str, result: ActionResult) -> str:
    """The Event text for a change written for ``user``: what changed, and how it is applied."""
    verb = "hot-plugged" if reason == ADDED_REASON else "hot-unplugged"
    what = f"interface {result.interface} (MAC {result.mac or 'none'}, network {result.network or 'none'})"
    if result.stopped:
        applied = "the VM is stopped: its next start uses the new spec"
    elif result.migration_pending:
        applied = f"live migration {result.migration} was already pending"
    elif result.migration:
        applied = f"live migration {result.migration} requested"
    elif result.migration_error:
        applied = "the live migration could not be requested"
    else:
        applied = "no migration requested"
    return f"{user} {verb} {what}; {applied}"


class HotplugFlow:
    """Runs the actions against one API client (the caller's credentials)."""

    def __init__(self, api: ApiClient, *, migrate: bool = True, events: EventSink | None = None,
                 known_macs: ClusterState | None = None, requested_by: str | None = None) -> None:
        """``requested_by``: the user this flow acts for with the service's own credentials (the
        subresource API); each change it writes is then recorded in an Event on the VM naming them,
        since the API server's own record of the write names only the service."""
        self._api = api
        self._migrate = migrate
        self._events = events
        self._known_macs = known_macs
        self._requested_by = requested_by

    async def add_nic(
        self, namespace: str, name: str, body: Mapping[str, Any], *, name_optional: bool = False,
    ) -> ActionResult:
        """Hot-plug the interface ``body`` describes (SPEC "Action API" addNic).

        ``name_optional``: without ``interfaceName`` the first free ``nic-<n>`` is used (the plugin).
        """
        request = plan.parse_add_nic(body, namespace, name_optional=name_optional)
        if isinstance(request, ActionRefusal):
            raise ActionFailed(request)  # a bad body is refused before anything is read
        state = await read_vm_state(self._api, namespace, name, ((request.nad_namespace, request.nad_name),),
                                    known_macs=self._known_macs)
        return await self._write_and_report(state, _planned(plan.plan_add_nic(request, state)), ADDED_REASON)

    async def remove_nic(self, namespace: str, name: str, body: Mapping[str, Any]) -> ActionResult:
        """Hot-unplug the named interface (``state: absent``); on a stopped VM, delete it from the spec."""
        state = await read_vm_state(self._api, namespace, name, known_macs=self._known_macs)
        interface = plan.parse_remove_nic(body)
        if isinstance(interface, ActionRefusal):
            raise ActionFailed(interface)
        return await self._write_and_report(state, _planned(plan.plan_remove_nic(interface, state)), UNPLUGGED_REASON)

    async def find_hotunpluggable_nics(self, namespace: str, name: str) -> ActionResult:
        """The interfaces that may be unplugged now ([] when the VM is not eligible)."""
        state = await read_vm_state(self._api, namespace, name)
        return ActionResult(interfaces=tuple(plan.find_hotunpluggable(state)))

    async def check_hotplug(self, namespace: str, name: str) -> plan.HotplugCheck:
        """Whether the VM is eligible now, every reason it is not, and its hot-plug port room."""
        return plan.hotplug_check(await read_vm_state(self._api, namespace, name))

    async def run(self, action: str, namespace: str, name: str, body: Mapping[str, Any]) -> ActionResult:
        """Dispatch by action name; an unknown action is a 400."""
        action = known_action(action)
        if action == plan.ADD_NIC:
            return await self.add_nic(namespace, name, body)
        if action == plan.REMOVE_NIC:
            return await self.remove_nic(namespace, name, body)
        return await self.find_hotunpluggable_nics(namespace, name)

    async def _write_and_report(self, state: VmState, nic: NicPlan, done_reason: str) -> ActionResult:
        """Write the plan, then apply it (a migration unless the VM is stopped) and say what was done."""
        namespace, name = state.view.namespace, state.view.name
        patched: dict[str, Any] = await _guard(
            vm_what(namespace, name), json_patch(self._api, *KUBEVIRT, VMS, namespace, name, list(nic.ops)))
        written = ActionResult(interface=nic.interface, mac=nic.mac, network=nic.network)
        if state.stopped:  # nothing runs: the next start boots with the edited spec
            result = replace(written, stopped=True)
        elif self._migrate:
            result = replace(await self._migration_for(patched), interface=nic.interface, mac=nic.mac,
                             network=nic.network)
        else:
            result = written
        if self._requested_by is not None:
            await self._report(patched, "Normal", done_reason, _change_message(done_reason, self._requested_by, result))
        return result

    async def _migration_for(self, vm: Mapping[str, Any]) -> ActionResult:
        """The pending migration of the VM's VMI if there is one, else a new one."""
        pending = await self._pending_migration(vm["metadata"]["namespace"], vm["metadata"]["name"])
        if pending is not None:
            return ActionResult(migration=pending, migration_pending=True)
        return await self._request_migration(vm)

    async def _pending_migration(self, namespace: str, name: str) -> str | None:
        """Name of a migration of VMI ``name`` that has not finished, or None (also when the caller may
        not list migrations: then a new one is requested, and KubeVirt refuses a duplicate itself)."""
        try:
            migrations = await list_custom_objects(self._api, *KUBEVIRT, MIGRATIONS, read=_as_is,
                                                   namespace=namespace)
        except (KubeError, TimeoutError, aiohttp.ClientError) as error:
            log.debug("could not list the migrations in %s: %s", namespace, error)
            return None
        for migration in migrations:
            metadata, spec = migration.get("metadata") or {}, migration.get("spec") or {}
            phase = (migration.get("status") or {}).get("phase", "")
            if (spec.get("vmiName") == name and phase not in _FINISHED_MIGRATION_PHASES
                    and not metadata.get("deletionTimestamp")):
                return str(metadata.get("name", ""))
        return None

    async def _request_migration(self, vm: Mapping[str, Any]) -> ActionResult:
        namespace, name = vm["metadata"]["namespace"], vm["metadata"]["name"]
        migration = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration",
            "metadata": {"generateName": f"{name}-", "namespace": namespace},
            "spec": {"vmiName": name},
        }
        try:
            created: dict[str, Any] = await _guard(
                f"migration of VM {namespace}/{name}",
                create_custom_object(self._api, *KUBEVIRT, MIGRATIONS, namespace, migration))
        except ActionFailed as failure:
            message = (f"the interface change of VM {namespace}/{name} is saved, but the live migration that "
                       f"applies it could not be created ({failure.refusal.message}); migrate or restart the VM "
                       "to apply it")
            if self._requested_by is not None:
                message += f" (change requested by {self._requested_by})"
            log.warning("%s", message)
            await self._report(vm, "Warning", MIGRATION_FAILED_REASON, message)
            return ActionResult(migration_error=message)
        return ActionResult(migration=str(created.get("metadata", {}).get("name", "")))

    async def _report(self, vm: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        if self._events is None:
            return
        try:
            await self._events.emit(vm, type_, reason, message)
        except Exception:  # the Event is a courtesy: never let it turn a saved change into an error
            log.exception("could not record the %s Event", reason)
