"""The validating webhook's fastest route: a VM CREATE judged from msgspec's typed decode.

On the validating path most of the cost was reading: ``orjson.loads`` builds a dict for every field
of the review, ``codec.decode_review`` checks the request's fields, and ``rules.facts`` walks the VM
again to check the JSON type of each field the general path would check. msgspec decodes the body
into the typed Structs below in one C pass, checking those same types as it goes and skipping every
field nobody reads; the route then hands the interfaces' MACs and the observed-MAC annotation to
``rules.admission.new_vm_plainly_allowed``, the rules' at-a-glance test of a new VM.

This route only ever *allows*: :func:`allowed_create` answers the uid of a VirtualMachine CREATE
whose MACs pass that test, and None for anything else: a body msgspec cannot read as these Structs
(any field of another type, a missing uid...), another operation or resource, an interface or
network without a name, a VM being deleted, an observed-MAC annotation that does not parse, or MACs
that need a closer look. The caller then takes the ordinary route (orjson, ``codec``,
``engine.review``), which decides and words everything. The Structs are at least as strict as
``codec._check_request`` and ``rules.facts``, so the route never allows what the ordinary route
refuses; ``tests/webhook/test_fastdecode.py`` (damaged real bodies) and
``tests/rules/test_fast_path.py`` (generated VMs) check it against the ordinary route.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

import msgspec

from nichotplug.rules.admission import new_vm_plainly_allowed
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.views import OBSERVED_MACS_ANNOTATION

__all__ = ["allowed_create"]

# Fields not declared are skipped unread; every declared one must have the JSON type given, else
# the whole decode fails and the ordinary route reads the body. ``X | None = None`` accepts an
# absent key and null alike, as ``rules.facts`` does.


# An interface or network needs a name (``rules.facts`` cannot vouch for one without): checked in C.
_Name = Annotated[str, msgspec.Meta(min_length=1)]


class _Struct(msgspec.Struct, gc=False):
    """Not tracked by the cycle collector: a decoded review holds no cycles and dies with its request."""


class _Metadata(_Struct):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    deletionTimestamp: Any = None


class _Interface(_Struct):
    name: _Name
    model: str | None = None
    macAddress: str | None = None
    state: str | None = None


class _Multus(_Struct):
    networkName: str | None = None


class _Network(_Struct):
    name: _Name
    multus: _Multus | None = None


class _Devices(_Struct):
    interfaces: list[_Interface] | None = None
    hostDevices: list[Any] | None = None
    gpus: list[Any] | None = None


class _Resources(_Struct):
    requests: dict[str, Any] | None = None


class _Memory(_Struct):
    guest: Any = None


class _Domain(_Struct):
    devices: _Devices | None = None
    memory: _Memory | None = None
    resources: _Resources | None = None


class _TemplateSpec(_Struct):
    domain: _Domain | None = None
    networks: list[_Network] | None = None
    nodeSelector: dict[str, str] | None = None


class _Template(_Struct):
    spec: _TemplateSpec | None = None


class _Spec(_Struct):
    template: _Template | None = None
    runStrategy: str | None = None
    running: bool | None = None


class _Status(_Struct):
    printableStatus: str | None = None


class _VirtualMachine(_Struct):
    metadata: _Metadata
    spec: _Spec | None = None
    status: _Status | None = None


class _GroupVersionKind(_Struct):
    group: str
    version: str
    kind: str


class _GroupVersionResource(_Struct):
    group: Literal["kubevirt.io"]
    version: str
    resource: Literal["virtualmachines"]


class _UserInfo(_Struct):
    username: str = ""


# What makes the review a VirtualMachine CREATE the rules judge is part of the types: a review of
# anything else (another operation, resource or subresource, a null userInfo the codec refuses,
# an empty uid) fails the decode, usually within its first few fields, and goes the ordinary way.
class _Request(_Struct):
    uid: Annotated[str, msgspec.Meta(min_length=1)]
    operation: Literal["CREATE"]
    kind: _GroupVersionKind
    resource: _GroupVersionResource
    object: _VirtualMachine
    subResource: Literal[""] = ""
    name: str = ""
    namespace: str = ""
    userInfo: _UserInfo = msgspec.field(default_factory=_UserInfo)
    oldObject: None = None  # a CREATE has none
    dryRun: bool = False


class _Review(_Struct):
    apiVersion: Literal["admission.k8s.io/v1"]  # review.API_VERSION
    kind: Literal["AdmissionReview"]  # review.KIND
    request: _Request


_DECODER = msgspec.json.Decoder(_Review)
_MAC_ADDRESS = operator.attrgetter("macAddress")


def _codec_would_refuse(body: bytes) -> bool:
    """Whether the ordinary route's codec refuses a body msgspec read: one that is not UTF-8.

    msgspec skips the fields it does not read without decoding their strings, so bad UTF-8 in one
    of them goes unnoticed there; the codec refuses such a body whole. The API server never sends
    one, but an answer must never depend on the route. An ASCII body, the usual one, is told at C
    speed. (A number beyond a double's range, the other thing
    msgspec skips unread, the codec reads too: see ``codec._loads``.)
    """
    if body.isascii():
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def allowed_create(body: bytes, cluster: ClusterState) -> str | None:
    """The uid of a VM CREATE the validating rules allow as it is (no warning), else None.

    One function on purpose: it runs for nearly every VM the cluster creates, and every call saved
    here is measurable (``benchmarks/webhook.py``).
    """
    try:
        review = _DECODER.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError):
        # DecodeError includes ValidationError (a field of another type, or not a VM CREATE);
        # invalid UTF-8 raises UnicodeDecodeError (a ValueError); nesting deeper than Python's
        # recursion limit raises RecursionError.
        return None
    vm = review.request.object
    metadata = vm.metadata
    if metadata.deletionTimestamp is not None:
        return None  # the rules allow a VM being deleted as it is, with their own reason
    observed_macs = metadata.annotations.get(OBSERVED_MACS_ANNOTATION, "") if metadata.annotations else ""
    template_spec = vm.spec and vm.spec.template and vm.spec.template.spec
    devices = template_spec and template_spec.domain and template_spec.domain.devices
    interfaces = devices.interfaces if devices and devices.interfaces else ()
    macs = list(filter(None, map(_MAC_ADDRESS, interfaces)))  # the non-empty ones, without a Python frame
    if not new_vm_plainly_allowed(macs, observed_macs, cluster) or _codec_would_refuse(body):
        return None
    return review.request.uid
