"""The AdmissionReview wire format (admission.k8s.io/v1): parse a request, build a response.

Two error families, never mixed (as in kopf): a request the webhook cannot read is a
:class:`BadReview` that the HTTP layer answers with a 4xx; a pod the webhook judged and
refused is an ``allowed: false`` response with a status, carrying the request's uid.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import orjson

from .decision import Decision

__all__ = ["AdmissionRequest", "BadReview", "parse_review", "review_response"]

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class BadReview(Exception):
    """The body is not an AdmissionReview this webhook can judge: answered with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class AdmissionRequest:
    """The fields of ``request`` that a decision needs; the pod stays the raw dict."""

    uid: str
    operation: str
    namespace: str
    name: str
    subresource: str
    dry_run: bool
    object: dict[str, Any] | None


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


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BadReview(400, message)


def _check_kind(request: Mapping[str, Any]) -> None:
    kind = request.get("kind")
    _require(isinstance(kind, Mapping), "request.kind is missing")
    group, version, name = kind.get("group", ""), kind.get("version"), kind.get("kind")
    _require((group, version, name) == ("", "v1", "Pod"),
             f"this webhook judges only core/v1 Pods, not {group or 'core'}/{version}/{name}; "
             f"check the webhook configuration's rules")


def parse_review(body: bytes) -> AdmissionRequest:
    """Read an AdmissionReview request; raise BadReview(400) for anything else."""
    try:
        review = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise BadReview(400, f"the body is not valid JSON: {err}") from None
    _require(isinstance(review, dict), "the body must be a JSON object (an AdmissionReview)")
    _require(review.get("apiVersion") == API_VERSION and review.get("kind") == KIND,
             f"expected apiVersion {API_VERSION} kind {KIND}, got apiVersion {review.get('apiVersion')!r} "
             f"kind {review.get('kind')!r}; set admissionReviewVersions: [\"v1\"]")
    request = review.get("request")
    _require(isinstance(request, dict), "the AdmissionReview has no request")
    uid = request.get("uid")
    _require(isinstance(uid, str) and bool(uid), "request.uid is missing")
    _check_kind(request)
    operation = request.get("operation")
    _require(isinstance(operation, str), "request.operation is missing")
    namespace = request.get("namespace") or ""
    _require(isinstance(namespace, str), "request.namespace must be a string")
    obj = request.get("object")
    _require(obj is None or isinstance(obj, dict), "request.object must be a JSON object")
    _require(obj is not None or operation != "CREATE", "a CREATE request must carry the pod in request.object")
    return AdmissionRequest(
        uid=uid,
        operation=operation,
        namespace=namespace,
        name=request.get("name") or "",
        subresource=request.get("subResource") or "",
        dry_run=request.get("dryRun") is True,
        object=obj,
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
