"""The admission chain of the in-process API server: calling admission webhooks like kube-apiserver.

For a write, :func:`admit` runs every matching webhook of the MutatingWebhookConfigurations
(configurations sorted by name, webhooks in their order, each JSON Patch applied before the next
webhook sees the object; ``reinvocationPolicy: IfNeeded`` webhooks run once more when a later
webhook changed the object), then every matching validating webhook (concurrently, as the real
server does). Webhooks are called over HTTPS at ``clientConfig.url`` with ``caBundle`` verified,
with an AdmissionReview v1 built field by field as kube-apiserver builds it
(``fixtures/admission/``). Denials, call failures and their ``failurePolicy`` give the same
``Status`` codes and messages as the real server (``fixtures/apiserver/15-webhook-denied.json``).

``matchConditions`` are evaluated after the selectors, on the object as the chain has it, with a CEL
engine (``common-expression-language``: cel-rust, whose equality is cel-go's heterogeneous equality,
as kube-apiserver's) over ``object``, ``oldObject`` (null on CREATE) and ``request`` (the
AdmissionRequest sent). As in kube-apiserver (checked on a real one): a false condition skips the
webhook whatever the others give; otherwise a condition that fails to evaluate follows
``failurePolicy``: Ignore skips the webhook, Fail refuses the write with 403 Forbidden
``<resource>.<group> "<name>" is forbidden: expression '<expression>' resulted in error: <error>``.
A configuration whose expression does not parse is refused when it is written (``builtins``).

Not modelled: ``matchPolicy: Equivalent`` (rules match the requested group/version exactly) and
``clientConfig.service`` (no cluster network here: a clear call error).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import functools
import logging
import re
import ssl
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import cel
import jsonpatch
import orjson

from nichotplug.testing.auth import UserInfo
from nichotplug.testing.errors import StatusError
from nichotplug.testing.resources import ResourceInfo

__all__ = ["AdmissionAttributes", "AdmissionError", "AdmissionResult", "UserInfo", "admit", "compile_condition",
           "evaluate_condition"]

log = logging.getLogger(__name__)

REVIEW_API_VERSION = "admission.k8s.io/v1"
DEFAULT_TIMEOUT_SECONDS = 10
MAX_TIMEOUT_SECONDS = 30
# Requests on these groups never go through webhooks, so a broken webhook cannot lock the
# cluster out of fixing its own configuration (as in kube-apiserver).
EXEMPT_GROUPS = frozenset({"admissionregistration.k8s.io"})
SAFE_SIDE_EFFECTS = frozenset({"None", "NoneOnDryRun"})

_REASON_BY_CODE = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
    406: "NotAcceptable", 409: "Conflict", 410: "Gone", 413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}
_OPTIONS_KIND = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions", "DELETE": "DeleteOptions",
                 "CONNECT": "ConnectOptions"}


@dataclass(frozen=True)
class AdmissionAttributes:
    """One write as admission sees it (``obj`` is None for DELETE, ``old_obj`` None for CREATE)."""

    operation: str  # CREATE, UPDATE, DELETE or CONNECT
    resource: ResourceInfo
    subresource: str
    namespace: str
    name: str
    obj: dict[str, Any] | None
    old_obj: Mapping[str, Any] | None  # read only: it is the stored object
    user: UserInfo
    dry_run: bool
    options: dict[str, Any] | None


@dataclass
class AdmissionResult:
    """The object after every mutating webhook, and the warnings all webhooks returned."""

    obj: dict[str, Any] | None
    warnings: list[str] = field(default_factory=list)


class AdmissionError(StatusError):
    """A refused write; ``warnings`` are the webhooks' warnings, sent as ``Warning`` headers with the error."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 warnings: Sequence[str] = ()) -> None:
        super().__init__(code, reason, message, details)
        self.warnings = list(warnings)


class _CallFailed(Exception):
    """The webhook could not be called or answered nonsense: ``failurePolicy`` decides."""


# ------------------------------------------------------------------------------------------ matching

def _rule_matches(rule: Mapping[str, Any], attrs: AdmissionAttributes) -> bool:
    info = attrs.resource
    operations = rule.get("operations") or ()
    if "*" not in operations and attrs.operation not in operations:
        return False
    if not _listed(rule.get("apiGroups"), info.group) or not _listed(rule.get("apiVersions"), info.version):
        return False
    scope = rule.get("scope") or "*"
    if (scope == "Namespaced" and not info.namespaced) or (scope == "Cluster" and info.namespaced):
        return False
    return any(_resource_matches(entry, info.plural, attrs.subresource) for entry in rule.get("resources") or ())


def _listed(allowed: Sequence[str] | None, value: str) -> bool:
    return any(item in ("*", value) for item in allowed or ())


def _resource_matches(entry: str, plural: str, subresource: str) -> bool:
    """``*`` is every resource but no subresource; ``*/*`` everything; ``vms/*``; ``*/status``."""
    wanted_resource, _, wanted_subresource = entry.partition("/")
    return wanted_resource in ("*", plural) and wanted_subresource in ("*", subresource)


def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector; an empty or missing selector matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_expression_matches(expression, labels) for expression in selector.get("matchExpressions") or ())


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator, values = expression.get("key", ""), expression.get("operator"), expression.get("values") or []
    if operator in ("In", "NotIn") and not values:
        raise ValueError(f"label selector operator {operator} on key {key!r} needs values")
    if operator in ("Exists", "DoesNotExist") and values:
        raise ValueError(f"label selector operator {operator} on key {key!r} takes no values")
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    raise ValueError(f"unknown label selector operator {operator!r} on key {key!r}")


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


def _namespace_selector_matches(webhook: Mapping[str, Any], attrs: AdmissionAttributes,
                                namespace_labels: Callable[[str], Mapping[str, str]]) -> bool:
    selector = webhook.get("namespaceSelector")
    is_namespace = attrs.resource.group == "" and attrs.resource.plural == "namespaces"
    if not attrs.resource.namespaced and not is_namespace:
        return True  # other cluster-scoped objects are never exempted by a namespace selector
    if not selector:
        return True
    if is_namespace and not attrs.subresource and attrs.operation in ("CREATE", "UPDATE"):
        return _selector_matches(selector, _labels(attrs.obj))
    return _selector_matches(selector, namespace_labels(attrs.name if is_namespace else attrs.namespace))


def _object_selector_matches(webhook: Mapping[str, Any], attrs: AdmissionAttributes) -> bool:
    selector = webhook.get("objectSelector")
    if not selector:
        return True
    return any(obj is not None and _selector_matches(selector, _labels(obj)) for obj in (attrs.obj, attrs.old_obj))


def _matches(webhook: Mapping[str, Any], attrs: AdmissionAttributes,
             namespace_labels: Callable[[str], Mapping[str, str]]) -> bool:
    """Rules, then namespaceSelector, then objectSelector; a malformed selector is a 500 like the real server."""
    if not any(_rule_matches(rule, attrs) for rule in webhook.get("rules") or ()):
        return False
    try:
        return _namespace_selector_matches(webhook, attrs, namespace_labels) and _object_selector_matches(
            webhook, attrs)
    except ValueError as error:
        raise _internal_error(f'webhook "{webhook.get("name", "")}" has an invalid selector: {error}') from error


# ----------------------------------------------------------------------------------------- the call

def _review(attrs: AdmissionAttributes, obj: dict[str, Any] | None) -> dict[str, Any]:
    """An AdmissionReview v1 request, with the keys kube-apiserver sends (omitting empty ones as it does)."""
    info = attrs.resource
    kind = {"group": info.group, "version": info.version, "kind": info.kind}
    resource = {"group": info.group, "version": info.version, "resource": info.plural}
    request: dict[str, Any] = {"uid": str(uuid.uuid4()), "kind": kind, "resource": resource}
    if attrs.subresource:
        request["subResource"] = attrs.subresource
    request["requestKind"] = dict(kind)
    request["requestResource"] = dict(resource)
    if attrs.subresource:
        request["requestSubResource"] = attrs.subresource
    if attrs.name:
        request["name"] = attrs.name
    if attrs.namespace:
        request["namespace"] = attrs.namespace
    request["operation"] = attrs.operation
    request["userInfo"] = _user_info(attrs.user)
    request["object"] = obj
    request["oldObject"] = attrs.old_obj
    request["dryRun"] = attrs.dry_run
    request["options"] = attrs.options if attrs.options is not None else _default_options(attrs)
    return {"kind": "AdmissionReview", "apiVersion": REVIEW_API_VERSION, "request": request}


def _user_info(user: UserInfo) -> dict[str, Any]:
    info: dict[str, Any] = {"username": user.username}
    if user.uid:
        info["uid"] = user.uid
    if user.groups:
        info["groups"] = list(user.groups)
    return info


def _default_options(attrs: AdmissionAttributes) -> dict[str, Any] | None:
    kind = _OPTIONS_KIND.get(attrs.operation)
    if kind is None:
        return None
    options: dict[str, Any] = {"kind": kind, "apiVersion": "meta.k8s.io/v1"}
    if attrs.dry_run:
        options["dryRun"] = ["All"]
    return options


def _webhook_url(webhook: Mapping[str, Any]) -> str:
    client_config = webhook.get("clientConfig") or {}
    url = client_config.get("url")
    if not url:
        if client_config.get("service"):
            raise _CallFailed("clientConfig.service is not supported by the in-process API server "
                              "(there is no cluster network): register the webhook with clientConfig.url")
        raise _CallFailed("the webhook has neither clientConfig.url nor clientConfig.service")
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise _CallFailed(f"clientConfig.url {url!r} must be an https URL with a host")
    timeout = _timeout_seconds(webhook)
    return f"{url}{'&' if parts.query else '?'}timeout={timeout}s"


def _timeout_seconds(webhook: Mapping[str, Any]) -> int:
    timeout = webhook.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= MAX_TIMEOUT_SECONDS:
        raise _CallFailed(f"timeoutSeconds must be an integer from 1 to {MAX_TIMEOUT_SECONDS}, not {timeout!r}")
    return timeout


def _ssl_context(webhook: Mapping[str, Any]) -> ssl.SSLContext:
    """Trust only the webhook's caBundle (the system roots without one); the host name is checked."""
    ca_bundle = (webhook.get("clientConfig") or {}).get("caBundle")
    if not ca_bundle:
        return ssl.create_default_context()
    try:
        pem = base64.b64decode(ca_bundle, validate=True).decode("ascii")
        return ssl.create_default_context(cadata=pem)
    except (binascii.Error, UnicodeDecodeError, ssl.SSLError, ValueError) as error:
        raise _CallFailed(f"clientConfig.caBundle is not a base64 PEM certificate bundle: {error}") from error


class WebhookClient:
    """Calls webhooks over kept-alive connections, as kube-apiserver does.

    One HTTP session for every call, and one TLS context per distinct ``caBundle``: loading a CA and
    shaking hands for every call made each webhook-backed write cost two TLS handshakes, which is
    neither what the real API server does nor fast enough to benchmark a controller against.
    Without ``start()`` (``admit`` called with no client), each call uses a session of its own.
    """

    _MAX_CONTEXTS = 64  # distinct caBundles kept; tests rarely have more than a handful

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}

    async def start(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        session, self._session = self._session, None
        self._contexts.clear()
        if session is not None:
            await session.close()

    def context_for(self, webhook: Mapping[str, Any]) -> ssl.SSLContext:
        key = str((webhook.get("clientConfig") or {}).get("caBundle") or "")
        found = self._contexts.get(key)
        if found is None:
            if len(self._contexts) >= self._MAX_CONTEXTS:
                self._contexts.clear()
            found = self._contexts[key] = _ssl_context(webhook)
        return found

    async def post(self, webhook: Mapping[str, Any], review: dict[str, Any]) -> Any:
        """POST the review; the decoded JSON answer, or :class:`_CallFailed` worded like the real server."""
        url = _webhook_url(webhook)
        context = self.context_for(webhook)
        timeout = aiohttp.ClientTimeout(total=_timeout_seconds(webhook))
        if self._session is None:
            async with aiohttp.ClientSession() as session:
                return await _post_with(session, url, review, context, timeout)
        try:
            return await _post_with(self._session, url, review, context, timeout)
        except _StaleConnection:
            # The webhook closed a kept-alive connection as we reused it: nothing reached it, so
            # send once more on a fresh connection (the real server's transport does the same).
            return await _post_with(self._session, url, review, context, timeout, fresh=True)


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the webhook before it answered."""


async def _post_with(session: aiohttp.ClientSession, url: str, review: dict[str, Any], context: ssl.SSLContext,
                     limits: aiohttp.ClientTimeout, *, fresh: bool = False) -> Any:
    headers = {"Content-Type": "application/json", "Accept": "application/json, */*"}
    if fresh:
        headers["Connection"] = "close"
    try:
        async with session.post(url, data=orjson.dumps(review), headers=headers, ssl=context,
                                timeout=limits) as response:
            body = await response.read()
            status = response.status
    except TimeoutError as error:
        raise _CallFailed(f'failed to call webhook: Post "{url}": context deadline exceeded') from error
    except aiohttp.ClientConnectorCertificateError as error:
        raise _CallFailed(f'failed to call webhook: Post "{url}": tls: failed to verify certificate: '
                          f"{error.certificate_error}") from error
    except aiohttp.ServerDisconnectedError as error:
        if not fresh:
            raise _StaleConnection() from error
        raise _CallFailed(f'failed to call webhook: Post "{url}": {error}') from error
    except aiohttp.ClientError as error:
        raise _CallFailed(f'failed to call webhook: Post "{url}": {error}') from error
    if status != 200:
        excerpt = body[:300].decode("utf-8", "replace")
        raise _CallFailed(f"failed to call webhook: the server responded with HTTP {status}: {excerpt}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _CallFailed(f"received invalid webhook response: the body is not JSON: {error}") from error


def _checked_response(answer: Any, request_uid: str, *, mutating: bool) -> dict[str, Any]:
    """The ``response`` of a reviewed AdmissionReview, checked as kube-apiserver checks it."""
    if not isinstance(answer, dict) or answer.get("kind") != "AdmissionReview" or \
            answer.get("apiVersion") != REVIEW_API_VERSION:
        got = f"{answer.get('apiVersion')}, Kind={answer.get('kind')}" if isinstance(answer, dict) else type(
            answer).__name__
        raise _CallFailed(f"received invalid webhook response: expected webhook response of "
                          f"{REVIEW_API_VERSION}, Kind=AdmissionReview, got {got}")
    response = answer.get("response")
    if not isinstance(response, dict):
        raise _CallFailed("received invalid webhook response: webhook response was absent")
    if response.get("uid") != request_uid:
        raise _CallFailed(f"received invalid webhook response: expected response.uid={request_uid!r}, "
                          f"got {response.get('uid')!r}")
    if not isinstance(response.get("allowed"), bool):
        raise _CallFailed("received invalid webhook response: response.allowed must be true or false")
    if response.get("patch"):
        if not mutating:
            raise _CallFailed("received invalid webhook response: validating webhook may not return a patch")
        if response.get("patchType") != "JSONPatch":
            raise _CallFailed(f"received invalid webhook response: webhook returned invalid patchType: "
                              f"{response.get('patchType')!r}")
    warnings = response.get("warnings") or []
    if not isinstance(warnings, list) or not all(isinstance(text, str) for text in warnings):
        raise _CallFailed("received invalid webhook response: response.warnings must be a list of strings")
    return response


# ------------------------------------------------------------------------------------------ outcomes

def _internal_error(message: str, warnings: Sequence[str] = ()) -> AdmissionError:
    """apimachinery's NewInternalError: the cause repeated in details.causes."""
    return AdmissionError(500, "InternalError", f"Internal error occurred: {message}",
                          {"causes": [{"message": message}]}, warnings)


def _denial(webhook_name: str, status: Mapping[str, Any] | None, warnings: Sequence[str]) -> AdmissionError:
    """A webhook said no: its code (at least 400), its message behind kube-apiserver's prefix."""
    status = status or {}
    code = status.get("code")
    code = code if isinstance(code, int) and code >= 400 else 400
    reason = status.get("reason") or _REASON_BY_CODE.get(code, "")
    denied_by = f'admission webhook "{webhook_name}" denied the request'
    if status.get("message"):
        message = f"{denied_by}: {status['message']}"
    elif status.get("reason"):
        message = f"{denied_by}: {status['reason']}"
    else:
        message = f"{denied_by} without explanation"
    details = status.get("details") if isinstance(status.get("details"), dict) else None
    return AdmissionError(code, reason, message, details, warnings)


def _apply_patch(webhook_name: str, obj: dict[str, Any] | None, encoded: str,
                 warnings: Sequence[str]) -> dict[str, Any] | None:
    try:
        operations = orjson.loads(base64.b64decode(encoded, validate=True))
        patched = jsonpatch.JsonPatch(operations).apply(obj, in_place=False)
    except (binascii.Error, orjson.JSONDecodeError, jsonpatch.JsonPatchException,
            jsonpatch.JsonPointerException, TypeError, KeyError, IndexError, AttributeError) as error:
        raise _internal_error(f'the patch of webhook "{webhook_name}" cannot be applied: {error}',
                              warnings) from error
    if not isinstance(patched, dict):
        raise _internal_error(f'the patch of webhook "{webhook_name}" did not leave an object', warnings)
    return patched


@dataclass
class _Chain:
    """State of one admission: the object as mutated so far and the warnings gathered."""

    attrs: AdmissionAttributes
    namespace_labels: Callable[[str], Mapping[str, str]]
    obj: dict[str, Any] | None
    client: WebhookClient
    warnings: list[str] = field(default_factory=list)

    def check_dry_run(self, webhook: Mapping[str, Any]) -> None:
        if self.attrs.dry_run and webhook.get("sideEffects") not in SAFE_SIDE_EFFECTS:
            raise AdmissionError(400, "BadRequest",
                                 f'admission webhook "{webhook.get("name", "")}" does not support dry run',
                                 None, self.warnings)

    async def call(self, webhook: Mapping[str, Any], *, mutating: bool) -> dict[str, Any] | None:
        """Call one webhook; its response, or None when a match condition is false or the call failed
        and ``failurePolicy`` is Ignore."""
        name = str(webhook.get("name", ""))
        review = _review(self.attrs, self.obj)
        if not self.conditions_hold(webhook, review["request"]):
            return None
        self.check_dry_run(webhook)  # after the conditions, as kube-apiserver's dispatchers do
        try:
            versions = webhook.get("admissionReviewVersions") or []
            if "v1" not in versions:
                raise _CallFailed(f"webhook does not accept v1 AdmissionReview (admissionReviewVersions: {versions})")
            answer = await self.client.post(webhook, review)
            return _checked_response(answer, review["request"]["uid"], mutating=mutating)
        except _CallFailed as failure:
            if webhook.get("failurePolicy", "Fail") == "Ignore":
                log.warning('failed calling webhook "%s" (failurePolicy Ignore): %s', name, failure)
                return None
            raise _internal_error(f'failed calling webhook "{name}": {failure}', self.warnings) from failure

    def conditions_hold(self, webhook: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
        """Whether every ``matchConditions`` expression is true: False as soon as one is false; when none
        is false but one failed to evaluate, ``failurePolicy`` decides (Ignore: False; Fail: 403)."""
        variables = {"object": self.obj, "oldObject": self.attrs.old_obj, "request": request}
        failed: tuple[str, str] | None = None
        for condition in webhook.get("matchConditions") or ():
            expression = str(condition.get("expression", ""))
            outcome = evaluate_condition(expression, variables)
            if outcome is False:
                return False
            if isinstance(outcome, str) and failed is None:
                failed = (expression, outcome)
        if failed is None:
            return True
        if webhook.get("failurePolicy", "Fail") == "Ignore":
            log.warning('match condition of webhook "%s" failed to evaluate (failurePolicy Ignore): %s',
                        webhook.get("name", ""), failed[1])
            return False
        raise self._condition_error(*failed)

    def _condition_error(self, expression: str, error: str) -> AdmissionError:
        """kube-apiserver's NewForbidden for a match condition that failed under failurePolicy Fail."""
        info, name = self.attrs.resource, self.attrs.name
        qualified = f"{info.plural}.{info.group}" if info.group else info.plural
        subject = f'{qualified} "{name}"' if name else qualified
        details: dict[str, Any] = {"name": name} if name else {}
        if info.group:
            details["group"] = info.group
        details["kind"] = info.plural
        return AdmissionError(403, "Forbidden", f"{subject} is forbidden: expression '{expression}' resulted in "
                                                f"error: {error}", details, self.warnings)

    def take(self, webhook: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        """Record warnings and raise the denial of one webhook's response."""
        self.warnings.extend(response.get("warnings") or [])
        if not response["allowed"]:
            raise _denial(str(webhook.get("name", "")), response.get("status"), self.warnings)


def _webhooks(configurations: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Webhooks in call order: configurations sorted by name, each configuration's webhooks in order."""
    ordered = sorted(configurations, key=lambda config: str((config.get("metadata") or {}).get("name", "")))
    return [webhook for config in ordered for webhook in config.get("webhooks") or ()]


@functools.lru_cache(maxsize=64)  # a few expressions, evaluated on every matching write
def compile_condition(expression: str) -> cel.Program:
    """A compiled CEL expression; ``ValueError`` worded as cel-go's parser words it when it does not parse."""
    try:
        return cel.compile(expression)
    except ValueError as error:
        raise ValueError(_PARSE_ERROR_PREFIX.sub("", str(error), count=1)) from None


_PARSE_ERROR_PREFIX = re.compile(r"^Failed to parse expression '.*?': ", re.DOTALL)


def evaluate_condition(expression: str, variables: Mapping[str, Any]) -> bool | str:
    """A match condition's value, or the text of the error that stopped its evaluation.

    The error text follows cel-go's where it matters to a reader (``no such key: <name>``).
    """
    try:
        result = compile_condition(expression).execute(dict(variables))
    except KeyError as error:
        return f"no such key: {error.args[0] if error.args else ''}"
    except (ValueError, TypeError, RuntimeError, OverflowError) as error:
        return str(error)
    if not isinstance(result, bool):
        return f"expression must evaluate to bool, got {type(result).__name__}"
    return result


async def _run_mutating(chain: _Chain, webhooks: Sequence[Mapping[str, Any]]) -> None:
    reinvocable: list[tuple[Mapping[str, Any], dict[str, Any] | None]] = []
    for webhook in webhooks:
        called = await _mutate_once(chain, webhook)
        if called and webhook.get("reinvocationPolicy") == "IfNeeded":
            reinvocable.append((webhook, chain.obj))
    # A webhook that asked for it sees the object again if someone after it changed it.
    for webhook, seen in reinvocable:
        if chain.obj != seen:
            await _mutate_once(chain, webhook)


async def _mutate_once(chain: _Chain, webhook: Mapping[str, Any]) -> bool:
    """Call one mutating webhook if it matches and apply its patch; whether it answered."""
    if not _matches(webhook, chain.attrs, chain.namespace_labels):
        return False
    response = await chain.call(webhook, mutating=True)
    if response is None:
        return False
    chain.take(webhook, response)
    if response.get("patch"):
        chain.obj = _apply_patch(str(webhook.get("name", "")), chain.obj, response["patch"], chain.warnings)
    return True


async def _run_validating(chain: _Chain, webhooks: Sequence[Mapping[str, Any]]) -> None:
    matched = [webhook for webhook in webhooks if _matches(webhook, chain.attrs, chain.namespace_labels)]
    outcomes = await asyncio.gather(*(chain.call(webhook, mutating=False) for webhook in matched),
                                    return_exceptions=True)
    refusal: BaseException | None = None
    for webhook, outcome in zip(matched, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            refusal = refusal or outcome
        elif outcome is not None:
            chain.warnings.extend(outcome.get("warnings") or [])
            if not outcome["allowed"] and refusal is None:
                refusal = _denial(str(webhook.get("name", "")), outcome.get("status"), ())
    if refusal is not None:
        if isinstance(refusal, AdmissionError):
            refusal.warnings = list(chain.warnings)
        raise refusal


async def admit(attrs: AdmissionAttributes, mutating_configs: list[dict[str, Any]],
                validating_configs: list[dict[str, Any]],
                namespace_labels: Callable[[str], Mapping[str, str]],
                client: WebhookClient | None = None) -> AdmissionResult:
    """Run the admission chain for one write (``client``: the server's pooled webhook client).

    Returns the object as the mutating webhooks left it (a copy; ``attrs.obj`` is not changed)
    and every warning. Raises :class:`AdmissionError` (a :class:`StatusError`) on a denial, on
    a failed call under ``failurePolicy: Fail``, on a patch that cannot be applied, and on a
    dry run reaching a webhook whose ``sideEffects`` are not ``None``/``NoneOnDryRun``.
    """
    chain = _Chain(attrs, namespace_labels, copy.deepcopy(attrs.obj), client or WebhookClient())
    if attrs.resource.group in EXEMPT_GROUPS:
        return AdmissionResult(chain.obj, [])
    await _run_mutating(chain, _webhooks(mutating_configs))
    await _run_validating(chain, _webhooks(validating_configs))
    return AdmissionResult(chain.obj, chain.warnings)
