"""The AdmissionReview wire format (admission.k8s.io/v1): parse a request, build a response.

Two error families, never mixed (as in kopf): a request the webhook cannot read is a
:class:`BadReview` that the HTTP layer answers with a 4xx; a pod the webhook judged and
refused is an ``allowed: false`` response with a status, carrying the request's uid.

Three kinds are judged: core/v1 Pods, and resource.k8s.io/v1 ResourceClaimTemplates and
ResourceClaims (the platform's DRA templates and the claims made from them, docs/dra.md). The
webhook configurations list only ``v1`` for each, with ``matchPolicy: Equivalent``, so the API
server converts a write made through another version (``resource.k8s.io/v1beta2``) to ``v1``
before sending it; any other kind or version is a misconfigured rule, refused with a 400 that
says so.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, NamedTuple, TypedDict

import orjson

from ..core.decision import Decision
from ..core.tenancy import ANONYMOUS, UserInfo

__all__ = ["CLAIM", "CLAIM_TEMPLATE", "POD", "AdmissionRequest", "BadReview", "parse_review", "review_response"]

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
#: The kinds judged (``request.kind``'s ``kind``), each in one group and version only.
POD = "Pod"
CLAIM_TEMPLATE = "ResourceClaimTemplate"
CLAIM = "ResourceClaim"
_KINDS: dict[tuple[Any, Any, Any], str] = {("", "v1", POD): POD,
                                           ("resource.k8s.io", "v1", CLAIM_TEMPLATE): CLAIM_TEMPLATE,
                                           ("resource.k8s.io", "v1", CLAIM): CLAIM}
#: What a request must carry, in the error messages.
_NOUNS = {POD: "pod", CLAIM_TEMPLATE: "ResourceClaimTemplate", CLAIM: "ResourceClaim"}


class BadReview(Exception):
    """The body is not an AdmissionReview this webhook can judge: answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class AdmissionRequest(NamedTuple):
    """The fields of ``request`` that a decision needs; the object stays the raw dict.

    A NamedTuple, not a frozen dataclass: as immutable, and built in a third of the time on
    every review (a frozen dataclass sets each field through ``object.__setattr__``).
    """

    uid: str
    operation: str
    namespace: str
    subresource: str
    dry_run: bool
    object: dict[str, Any] | None
    #: The object before the change (``request.oldObject``): set on UPDATE, None on CREATE.
    old_object: dict[str, Any] | None = None
    user_info: UserInfo = ANONYMOUS
    #: :data:`POD`, :data:`CLAIM_TEMPLATE` or :data:`CLAIM`.
    kind: str = POD


class StatusDict(TypedDict, total=False):
    code: int
    message: str
    reason: str


class ResponseDict(TypedDict, total=False):
    uid: str
    allowed: bool
    patchType: str
    patch: str
    warnings: list[str]
    status: StatusDict


def _bad(message: str) -> BadReview:
    return BadReview(400, message)


def _kind(request: Mapping[str, Any]) -> str:
    kind = request.get("kind")
    if not isinstance(kind, dict):
        raise _bad("request.kind is missing")
    group, version, name = kind.get("group", ""), kind.get("version"), kind.get("kind")
    known = _KINDS.get((group, version, name))
    if known is None:
        raise _bad(f"this webhook judges only core/v1 Pods and resource.k8s.io/v1 ResourceClaimTemplates and "
                   f"ResourceClaims, not {group or 'core'}/{version}/{name}; check the webhook configuration's "
                   f"rules (apiVersions [v1] with matchPolicy Equivalent)")
    return known


def _user_info(request: Mapping[str, Any]) -> UserInfo:
    info = request.get("userInfo")
    if info is None:
        return ANONYMOUS
    if not isinstance(info, dict):
        raise _bad("request.userInfo must be a JSON object")
    username, groups = info.get("username") or "", info.get("groups") or []
    if not isinstance(username, str) or not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise _bad("request.userInfo must carry a string username and a list of string groups")
    return UserInfo(username, tuple(groups))


def parse_review(body: bytes) -> AdmissionRequest:
    """Read an AdmissionReview request; raise BadReview(400) for anything else.

    Plain ``if ... raise`` with the message built only on failure: this runs on every review,
    and formatting the messages up front cost as much as the checks.
    """
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise _bad(f"the body is not valid JSON: {err}") from None
    if not isinstance(review, dict):
        raise _bad("the body must be a JSON object (an AdmissionReview)")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise _bad(f"expected apiVersion {API_VERSION} kind {KIND}, got apiVersion {review.get('apiVersion')!r} "
                   f"kind {review.get('kind')!r}; set admissionReviewVersions: [\"v1\"]")
    request = review.get("request")
    if not isinstance(request, dict):
        raise _bad("the AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise _bad("request.uid is missing")
    kind = _kind(request)
    operation = request.get("operation")
    if not isinstance(operation, str):
        raise _bad("request.operation is missing")
    namespace = request.get("namespace") or ""
    if not isinstance(namespace, str):
        raise _bad("request.namespace must be a string")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise _bad("request.object must be a JSON object")
    if obj is None and operation == "CREATE":
        raise _bad(f"a CREATE request must carry the {_NOUNS[kind]} in request.object")
    old = request.get("oldObject")
    if old is not None and not isinstance(old, dict):
        raise _bad("request.oldObject must be a JSON object")
    if operation == "UPDATE" and (obj is None or old is None):
        raise _bad(f"an UPDATE request must carry the {_NOUNS[kind]} in request.object and request.oldObject")
    return AdmissionRequest(
        uid=uid,
        operation=operation,
        namespace=namespace,
        subresource=request.get("subResource") or "",
        dry_run=request.get("dryRun") is True,
        object=obj,
        old_object=old,
        user_info=_user_info(request),
        kind=kind,
    )


def review_response(uid: str, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview answer for a decision (the patch only travels with an allow)."""
    response: ResponseDict = {"uid": uid, "allowed": decision.allowed}
    if decision.allowed and decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(orjson.dumps(list(decision.patch))).decode()
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if not decision.allowed:
        response["status"] = {"code": decision.code, "message": decision.message,
                              "reason": "InternalError" if decision.code >= 500 else "Forbidden"}
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
