"""The validating webhook's fastest route: a VM CREATE decoded by msgspec straight into ``VmFacts``.

On the validating path most of the rules' own cost was reading: ``orjson.loads`` builds a dict for
every field of the review, ``codec.decode_review`` checks the request's fields, and
``rules.facts.read_vm_facts`` walks the VM again to check the JSON type of each field the general
path would check. msgspec decodes the body into the typed Structs below in one C pass, checking
those same types as it goes, and skips every field nobody reads.

This route only ever *allows*: :func:`allowed_create` answers True for a VirtualMachine CREATE
whose facts the MAC rules allow without a warning, and None for anything else: a body msgspec
cannot read as these Structs (any field of another type, a missing uid...), another operation or
resource, an empty name, a VM being deleted, or a rule that denies or warns. The caller then takes
the ordinary route (orjson, ``codec``, ``engine.review``), which decides and words everything.
The Structs are at least as strict as ``codec._check_request`` and ``rules.facts``, so the route
never allows what the ordinary route refuses; ``tests/rules/test_fast_path.py`` checks it on
generated VMs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import orjson

from nichotplug.rules.admission import validate_create_facts
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.facts import InterfaceFacts, NadRef, VmFacts
from nichotplug.rules.views import OBSERVED_MACS_ANNOTATION, RUNNING_STRATEGIES, observed_macs_error
from nichotplug.webhook.review import API_VERSION, KIND

__all__ = ["FastCreate", "allowed_create", "decode_create"]

_UNSET: Any = msgspec.UNSET  # "the key is absent", told apart from an explicit null


# Fields not declared are skipped unread; every declared one must have the JSON type given, else
# the whole decode fails and the ordinary route reads the body. ``X | None = None`` accepts an
# absent key and null alike, as ``rules.facts`` does.


class _Metadata(msgspec.Struct):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    deletionTimestamp: Any = None


class _Interface(msgspec.Struct):
    name: str
    model: str | None = None
    macAddress: str | None = None
    state: str | None = None


class _Multus(msgspec.Struct):
    networkName: str | None = None


class _Network(msgspec.Struct):
    name: str
    multus: _Multus | None = _UNSET  # UNSET: no multus key (pod or other network)


class _Devices(msgspec.Struct):
    interfaces: list[_Interface] | None = None
    hostDevices: list[Any] | None = None
    gpus: list[Any] | None = None


class _Resources(msgspec.Struct):
    requests: dict[str, Any] | None = None


class _Memory(msgspec.Struct):
    guest: Any = None


class _Domain(msgspec.Struct):
    devices: _Devices | None = None
    memory: _Memory | None = None
    resources: _Resources | None = None


class _TemplateSpec(msgspec.Struct):
    domain: _Domain | None = None
    networks: list[_Network] | None = None
    nodeSelector: dict[str, str] | None = None


class _Template(msgspec.Struct):
    spec: _TemplateSpec | None = None


class _Spec(msgspec.Struct):
    template: _Template | None = None
    runStrategy: str | None = None
    running: bool | None = None


class _Status(msgspec.Struct):
    printableStatus: str | None = None


class _VirtualMachine(msgspec.Struct):
    metadata: _Metadata
    spec: _Spec | None = None
    status: _Status | None = None


class _GroupVersionKind(msgspec.Struct):
    group: str
    version: str
    kind: str


class _GroupVersionResource(msgspec.Struct):
    group: str
    version: str
    resource: str


class _UserInfo(msgspec.Struct):
    username: str = ""


class _Request(msgspec.Struct):
    uid: str
    operation: str
    kind: _GroupVersionKind
    resource: _GroupVersionResource
    object: _VirtualMachine
    subResource: str = ""
    name: str = ""
    namespace: str = ""
    userInfo: _UserInfo | None = _UNSET  # null is a bad field for the codec: refused below
    oldObject: None = None  # a CREATE has none
    dryRun: bool = False


class _Review(msgspec.Struct):
    apiVersion: str
    kind: str
    request: _Request


_DECODER = msgspec.json.Decoder(_Review)


class FastCreate(NamedTuple):
    """What the route needs of a decoded CREATE: the uid to echo and the VM's facts."""

    uid: str
    facts: VmFacts


# For spotting numbers orjson may refuse: every digit becomes "0".
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_OVERFLOW_SHAPES = (b"0e000", b"0e+000", b"0E000", b"0E+000", b"0" * 309)


def _orjson_would_refuse(body: bytes) -> bool:
    """Whether the ordinary route's parser refuses a body msgspec read.

    msgspec skips the fields it does not read without checking them as closely as orjson does (the
    differential fuzz test in ``tests/webhook/test_fastdecode.py`` found these two): bytes that are
    not UTF-8, and a number that does not fit a double (``1e400``). The API server sends neither,
    but an answer must never depend on the route. UTF-8 is checked at C speed (an ASCII body, the
    usual one, needs no decoding); only a body with a number that has a 3-digit exponent or 309
    digits in a row pays for orjson's judgement.
    """
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return True
    shape = body.translate(_DIGITS_AS_ZERO)
    for overflow in _OVERFLOW_SHAPES:  # a plain loop: a generator here cost more than the searches
        if overflow in shape:
            break
    else:
        return False
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return True
    return False


def decode_create(body: bytes) -> FastCreate | None:
    """The uid and facts of a VirtualMachine CREATE review, or None: take the ordinary route."""
    try:
        review = _DECODER.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError):
        # DecodeError includes ValidationError (a field of another type); invalid UTF-8 raises
        # UnicodeDecodeError (a ValueError); nesting deeper than Python's recursion limit raises.
        return None
    if _orjson_would_refuse(body):
        return None
    request = review.request
    if (review.apiVersion != API_VERSION or review.kind != KIND or request.operation != "CREATE"
            or not request.uid or request.userInfo is None or request.subResource
            or request.resource.resource != "virtualmachines" or request.resource.group != "kubevirt.io"):
        return None
    facts = _facts(request.object, request.namespace)
    return None if facts is None else FastCreate(request.uid, facts)


def _facts(vm: _VirtualMachine, namespace: str) -> VmFacts | None:
    """``rules.facts.read_vm_facts`` of the typed VM (the types were checked by the decode)."""
    metadata = vm.metadata
    if metadata.deletionTimestamp is not None:
        return None
    spec = vm.spec or _Spec()
    template_spec = (spec.template or _Template()).spec or _TemplateSpec()
    devices = (template_spec.domain or _Domain()).devices or _Devices()
    interfaces = []
    for item in devices.interfaces or ():
        if not item.name:
            return None
        interfaces.append(InterfaceFacts(item.name, item.macAddress or "", item.state or ""))
    vm_namespace = metadata.namespace or namespace
    nads: dict[str, NadRef] = {}
    for network in template_spec.networks or ():
        if not network.name:
            return None
        if network.multus is _UNSET:
            nads[network.name] = None
        else:
            ref_namespace, slash, nad_name = ((network.multus and network.multus.networkName) or "").partition("/")
            nads[network.name] = (ref_namespace, nad_name) if slash else (vm_namespace, ref_namespace)
    running = spec.runStrategy in RUNNING_STRATEGIES if spec.runStrategy else spec.running is True
    annotation = (metadata.annotations or {}).get(OBSERVED_MACS_ANNOTATION, "")
    return VmFacts(vm_namespace, metadata.name or "", running, tuple(interfaces), nads,
                   observed_macs_error(annotation))


def allowed_create(body: bytes, cluster: ClusterState) -> str | None:
    """The uid of a VM CREATE the validating rules allow as it is (no warning), else None."""
    create = decode_create(body)
    if create is None:
        return None
    decision = validate_create_facts(create.facts, cluster)
    if not decision.allowed or decision.warnings or decision.reason != "allowed":
        return None  # the ordinary route decides again and words the answer
    return create.uid
