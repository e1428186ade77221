"""What the admission rules read of an AdmissionReview request, and which requests are theirs to judge."""

from __future__ import annotations

from typing import NamedTuple

from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.views import InvalidObject, VmView

__all__ = ["JUDGED_OPERATIONS", "AdmissionInput", "is_judged", "read_old", "vm_runs"]

JUDGED_OPERATIONS = frozenset({"CREATE", "UPDATE"})
VM_GROUP = "kubevirt.io"
VM_RESOURCE = "virtualmachines"


def is_judged(operation: str, group: str = VM_GROUP, resource: str = VM_RESOURCE, sub_resource: str = "") -> bool:
    """Whether a request is the rules' to judge: a CREATE or UPDATE of a VirtualMachine itself.

    Status-subresource writes, VMIs and DELETEs may still reach the webhooks (a wide registration, a
    recorder's rules): they are allowed untouched. The webhook engine asks this once per request.
    """
    return operation in JUDGED_OPERATIONS and resource == VM_RESOURCE and group == VM_GROUP and not sub_resource


class AdmissionInput(NamedTuple):
    """The parts of an AdmissionReview request the rules read (immutable).

    ``obj`` / ``old_obj`` are the request's ``object`` / ``oldObject`` as decoded from JSON (None
    when absent); they may be anything, the rules check. A named tuple, not a frozen dataclass:
    one is built per webhook request, and a tuple is built several times faster.
    """

    operation: str
    namespace: str
    name: str
    obj: object
    old_obj: object = None
    username: str = ""
    dry_run: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def read_old(req: AdmissionInput) -> VmView | None:
    if req.operation != "UPDATE":
        return None
    try:
        return VmView.from_dict(req.old_obj, namespace=req.namespace)
    except InvalidObject:
        return None  # stored objects passed the schema; if one cannot be read, judge the new one alone


def vm_runs(vm: VmView, old: VmView | None, cluster: ClusterState) -> bool:
    """Whether an UPDATE meets a running guest, so its interface edits are hot-plug edits.

    Yes with a VMI that has not finished; with none, when the spec asked to run before the edit
    (its VMI is on the way). A finished VMI (the guest shut itself down) is a stopped VM: the next
    start boots a new VMI from the spec, so edits are cold edits, as SPEC has them for a stopped VM.
    """
    vmi = cluster.get_vmi(vm.namespace, vm.name)
    if vmi is not None:
        return not vmi.finished
    return old is not None and old.running
