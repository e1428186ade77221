"""The whole logic of both admission webhooks for VirtualMachine CREATE and UPDATE.

The webhook adapter decodes the AdmissionReview into an ``AdmissionInput``, calls ``mutate_vm`` or
``validate_vm`` with the cluster view, and encodes the returned ``Decision``. Neither function
raises, whatever the input; other operations (DELETE, CONNECT) are allowed untouched.

When does a VM *run*? When the cluster has a VMI of that namespace/name that has not finished
(phase Succeeded or Failed), or, with no VMI, when the old object's spec asks it to run (run
strategy Always, RerunOnFailure or Once, or ``running: true``). Otherwise the edit is *cold*: only
the MAC rules apply, and mutation treats it like a CREATE.

Mutation (SPEC "Mutating webhook", ``rules.mutation``): every interface that needs a MAC gets the
one it had, the one the observed-MAC annotation records, or a generated one.

Validation (SPEC "Validating webhook"), first failure wins:

1. the object must be readable (403);
2. every spec MAC must be a valid unicast MAC (403);
3. two interfaces of the VM may not share a MAC (409);
4. a MAC may be used once per cluster network: every other VM's spec MACs and annotation MACs
   count (409, naming both VMs, the interfaces, the MAC and the scope);
5. an UPDATE of a running VM that adds interfaces or sets ``state: absent`` must follow the hot-plug
   rules: the VM is eligible, each added interface is virtio + bridge on a hot-pluggable NAD, each
   unplugged interface is hot-unpluggable (judged by the interface alone: its NAD may be gone). One
   403 lists every problem of the VM and of every added or unplugged interface, each naming the VM,
   the interface and what to do, so a user fixes them all in one go.

Rules 2 to 4 judge only the interfaces this request adds or whose MAC (rule 2: MAC as written) or
network it changes: an unusable MAC or a collision that predates the webhook must not block unrelated
writes of the VM (our own controller's annotation updates, a user's label edit, a start or stop, the
finalizer removal on delete), and the validating webhook's match conditions do not even send a write
that changes none of them (``webhook/registration.py``; ARCHITECTURE.md lists what each rule reads). For the
same reason, and because it is the most frequent write, an UPDATE that leaves ``spec`` exactly as
it was is judged on its metadata only (readable, annotation parses), without building the views.
Objects being deleted are allowed as they are. Warnings: more hot-plugged interfaces than KubeVirt v1.6's
hot-plug port budget, an unplugged interface whose network is gone or no longer a bridge, and an
observed-MAC annotation that does not parse.

Where each part lives: ``admission_input`` (the request, ``is_judged``, when a VM runs),
``mutation``, ``mac_rules`` (rules 2-4), ``validation`` (the general path and the hot-plug rules) and
``fast_path`` (both webhooks' answers from ``rules.facts`` when the facts suffice). This module joins
them: each entry point tries the fast path, then the general path.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from nichotplug.rules.admission_input import AdmissionInput, is_judged
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.decision import Decision, Reason
from nichotplug.rules.fast_path import every_mac_written, new_vm_plainly_allowed, validate_fast
from nichotplug.rules.mutation import mutate_vm_fully
from nichotplug.rules.validation import hotplug_port_budget, spec_unchanged, validate_metadata_write, validate_vm_fully

__all__ = [
    "AdmissionInput",
    "hotplug_port_budget",
    "is_judged",
    "mutate_judged_vm",
    "mutate_vm",
    "mutate_vm_fully",
    "new_vm_plainly_allowed",
    "validate_judged_vm",
    "validate_vm",
    "validate_vm_fully",
]

_NOT_JUDGED = Decision.allow(reason=Reason.NOT_JUDGED)
_NO_CHANGE = Decision.allow(reason=Reason.NO_CHANGE)


def mutate_vm(
    req: AdmissionInput, cluster: ClusterState, random_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> Decision:
    """Which MACs to add to the VM in ``req`` (see ``rules.mutation``); other requests are not judged."""
    if not is_judged(req.operation):
        return _NOT_JUDGED
    return mutate_judged_vm(req, cluster, random_bytes)


def mutate_judged_vm(
    req: AdmissionInput, cluster: ClusterState, random_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> Decision:
    """``mutate_vm`` of a request already found ours to judge (the webhook engine asks ``is_judged``)."""
    if every_mac_written(req):
        return _NO_CHANGE
    return mutate_vm_fully(req, cluster, random_bytes)


def validate_vm(req: AdmissionInput, cluster: ClusterState) -> Decision:
    """Allow or deny the VM write in ``req`` (see the module docstring for the rules and their order)."""
    if not is_judged(req.operation):
        return _NOT_JUDGED
    return validate_judged_vm(req, cluster)


def validate_judged_vm(req: AdmissionInput, cluster: ClusterState) -> Decision:
    """``validate_vm`` of a request already found ours to judge (the webhook engine asks ``is_judged``)."""
    if spec_unchanged(req):
        return validate_metadata_write(req)
    return validate_fast(req, cluster) or validate_vm_fully(req, cluster)
