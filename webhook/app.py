"""The HTTP shell: FastAPI routes around the pure admission handlers. Only this module knows HTTP.

- ``POST /mutate`` and ``POST /validate`` take an AdmissionReview and always answer one
  (HTTP 200) once the body could be read as one; what cannot be read gets a clear 4xx
  (400 malformed, 413 too large, 415 not JSON) before any decision, never a 500.
- ``GET /healthz`` (the process serves), ``GET /readyz`` (it can judge pods), ``GET /metrics``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from .admission import Usage, mutate, validate
from .decision import Decision
from .metrics import CONTENT_TYPE_LATEST, WebhookMetrics
from .policy import Policy
from .review import AdmissionRequest, BadReview, parse_review, review_response

__all__ = ["MAX_BODY_BYTES", "Runtime", "create_app"]

log = logging.getLogger("gpu_webhook.http")

#: The API server caps request bodies at 3 MiB; an AdmissionReview for a CREATE carries one
#: object of at most that size plus a small envelope, so anything larger is not from it.
MAX_BODY_BYTES = 3 * 1024 * 1024 + 64 * 1024
_JSON = "application/json"


def _no_usage() -> Usage:
    return {}


@dataclass
class Runtime:
    """What the server decides with, built once in ``serve`` and passed in (no module globals).

    ``usage`` returns the per-tenant usage to charge against. Until live cluster tracking
    lands it is empty, so the validating step charges each pod alone against its quota.
    """

    policy: Policy
    usage: Callable[[], Usage] = _no_usage
    ready: Callable[[], bool] = lambda: True
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)


def _json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


async def _read_body(request: Request) -> bytes:
    """The body, refused before parsing when it is not JSON or over the cap."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _JSON:
        raise BadReview(415, f"Content-Type must be {_JSON}, got {content_type or 'none'!r}")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise BadReview(413 if declared.isdigit() else 400,
                        f"the body must be at most {MAX_BODY_BYTES} bytes (Content-Length {declared})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadReview(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _log_decision(step: str, review: AdmissionRequest, decision: Decision, seconds: float) -> None:
    pod_meta = (review.object or {}).get("metadata") or {}
    log.info("step=%s uid=%s namespace=%s pod=%s allowed=%s reason=%s dry_run=%s ms=%.2f%s", step, review.uid,
             review.namespace, pod_meta.get("name") or pod_meta.get("generateName") or "-", decision.allowed,
             decision.reason, review.dry_run, seconds * 1000,
             f" message={decision.message!r}" if decision.message else "")


def _admission_route(step: str, runtime: Runtime, decide: Callable[[AdmissionRequest], Decision]):
    async def handle(request: Request) -> Response:
        started = time.perf_counter()
        try:
            review = parse_review(await _read_body(request))
        except BadReview as bad:
            runtime.metrics.bad_requests.labels(step, str(bad.status)).inc()
            log.warning("step=%s bad request status=%s: %s", step, bad.status, bad.message)
            return _json_response({"error": bad.message, "status": bad.status}, bad.status)
        decision = decide(review)
        seconds = time.perf_counter() - started
        runtime.metrics.observe(step, decision, seconds)
        _log_decision(step, review, decision, seconds)
        return _json_response(review_response(review.uid, decision))

    handle.__name__ = step
    return handle


def create_app(runtime: Runtime) -> FastAPI:
    """The ASGI app for one runtime."""
    app = FastAPI(title="airflow-gpu-webhook", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/mutate", _admission_route("mutate", runtime, lambda r: mutate(r, runtime.policy)),
                      methods=["POST"])
    app.add_api_route("/validate", _admission_route(
        "validate", runtime, lambda r: validate(r, runtime.policy, runtime.usage())), methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json_response({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        ready = runtime.ready()
        return _json_response({"ready": ready, "policy": runtime.policy.metadata.name}, 200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
