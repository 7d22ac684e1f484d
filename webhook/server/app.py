"""The HTTP shell: FastAPI routes around the pure admission handlers. Only this module knows HTTP.

- ``POST /mutate`` and ``POST /validate`` take an AdmissionReview and always answer one
  (HTTP 200) once the body could be read as one; what cannot be read gets a clear 4xx
  (400 malformed, 413 too large, 415 not JSON) before any decision, never a 500.
- ``GET /healthz`` (the process serves), ``GET /readyz`` (it can judge pods), ``GET /metrics``.
- With ``serve --client-ca``: the TLS handshake verifies any client certificate against that
  CA (another CA's certificate never gets a connection), and the two admission routes answer
  401 to a connection that presented none, before reading the body: only the API server, which
  holds the client certificate, can have a pod judged or quota reserved. Probes and metrics
  stay open to clients without one (the kubelet presents none).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.decision import Decision, Reason
from ..core.nodes import NodeOffer
from ..core.pod import metadata
from ..core.policy import Policy
from .admission import PodProfiles, Usage, mutate, validate
from .metrics import CONTENT_TYPE_LATEST, WebhookMetrics
from .review import AdmissionRequest, BadReview, parse_review, review_response

__all__ = ["CLIENT_CERTIFICATE", "MAX_BODY_BYTES", "AdmissionEndpoints", "NodeSource", "Reserve", "Runtime",
           "TemplateSource", "UsageSource", "create_app", "with_client_certificate"]

log = logging.getLogger("gpu_webhook.http")

#: The API server caps request bodies at 3 MiB; an AdmissionReview for a CREATE carries one
#: object of at most that size plus a small envelope, so anything larger is not from it.
MAX_BODY_BYTES = 3 * 1024 * 1024 + 64 * 1024
_JSON = "application/json"
#: Key in the ASGI scope's ``state``: whether the connection presented a verified client certificate.
CLIENT_CERTIFICATE = "gpu_webhook.client_certificate"


class UsageSource(Protocol):
    """The per-tenant usage to charge against, or None while it is not known yet (the pod watch
    has not synced). ``serve --track-usage``: the cluster tracking's (webhook/cluster/wiring.py)."""

    def __call__(self) -> Usage | None: ...


class NodeSource(Protocol):
    """The cluster's nodes and whether the node watch has synced; ``(None, True)``: no capacity check."""

    def __call__(self) -> tuple[Sequence[NodeOffer] | None, bool]: ...


class TemplateSource(Protocol):
    """(namespace, name) of the platform's claim templates in place, or None while not known (no
    check). ``serve --track-usage``: the cluster tracking's template watch (webhook/cluster/templates.py)."""

    def __call__(self) -> Container[tuple[str, str]] | None: ...


class Reserve(Protocol):
    """Records an admitted pod's charge (the quota ledger, webhook/cluster/ledger.py) and returns
    the decision to answer with: the same, or a denial when the quota is full after all."""

    def __call__(self, review: AdmissionRequest, decision: Decision, policy: Policy) -> Awaitable[Decision]: ...


def _no_usage() -> Usage | None:
    return {}


def _no_nodes() -> tuple[Sequence[NodeOffer] | None, bool]:
    return None, True


def _no_templates() -> Container[tuple[str, str]] | None:
    return None


def _always_ready() -> bool:
    return True


@dataclass
class Runtime:
    """What the server decides with, built once in ``serve`` and passed in (no module globals).

    Without ``serve --track-usage`` usage is empty, so the validating step charges each pod alone
    against its quota, no node capacity is checked and nothing is reserved; with it, ``serve``
    builds the runtime from the cluster tracking (webhook/cluster/wiring.py ``Tracking``).
    """

    policy: Policy
    usage: UsageSource = _no_usage
    ready: Callable[[], bool] = _always_ready
    nodes: NodeSource = _no_nodes
    #: The platform's claim templates in place (DRA claim profiles); None: no check.
    templates: TemplateSource = _no_templates
    #: The tracked managed pods' profiles, to judge whose a platform ResourceClaim is; None: not
    #: tracked (any DRA claim profile's spec passes then).
    pod_profiles: PodProfiles | None = None
    #: With ``serve --track-usage``: records each admitted pod's charge in the shared ledger.
    reserve: Reserve | None = None
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)
    #: ``serve --client-ca``: the admission routes judge only connections with a verified client certificate.
    client_certificate_required: bool = False

    def __post_init__(self) -> None:
        # The quota gauges show whatever policy is in force at scrape time, reloads included.
        self.metrics.follow_policy(lambda: self.policy)


def _json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=_JSON)


def _content_headers(scope: Scope) -> tuple[str, str | None]:
    """(media type, Content-Length) in one pass over the headers."""
    content_type, length = "", None
    for key, value in scope["headers"]:
        if key == b"content-type":
            content_type = value.decode("latin-1").split(";")[0].strip().lower()
        elif key == b"content-length":
            length = value.decode("latin-1")
    return content_type, length


async def _read_body(scope: Scope, receive: Receive) -> bytes:
    """The body, refused before parsing when it is not JSON or over the cap."""
    content_type, declared = _content_headers(scope)
    if content_type != _JSON:
        raise BadReview(415, f"Content-Type must be {_JSON}, got {content_type or 'none'!r}")
    digits = declared is not None and declared.isascii() and declared.isdigit()
    if declared is not None and (not digits or int(declared) > MAX_BODY_BYTES):
        raise BadReview(413 if digits else 400,
                        f"the body must be at most {MAX_BODY_BYTES} bytes (Content-Length {declared})")
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadReview(400, "the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadReview(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _send_json(send: Send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _log_decision(step: str, review: AdmissionRequest, decision: Decision, seconds: float) -> None:
    """Denials and warnings at INFO (someone will ask why); plain allows at DEBUG.

    Every decision is counted in the metrics; a log line per allowed GPU pod cost about 15% of
    the server's throughput (benchmarks/), for lines nobody reads.
    """
    level = logging.INFO if (not decision.allowed or decision.warnings) else logging.DEBUG
    if not log.isEnabledFor(level):
        return
    meta = metadata(review.object or review.old_object or {})
    name = meta.get("name") or meta.get("generateName") or "-"
    log.log(level, "step=%s uid=%s namespace=%s %s=%s allowed=%s reason=%s dry_run=%s ms=%.2f%s", step, review.uid,
             review.namespace, review.kind.lower(), name, decision.allowed,
             decision.label, review.dry_run, seconds * 1000,
             f" message={decision.message!r}" if decision.message else "")


class AdmissionEndpoints:
    """ASGI app: ``POST /mutate`` and ``POST /validate`` straight on the ASGI interface, the rest
    (health, readiness, metrics, 404s) through FastAPI.

    The admission routes are the hot path of every GPU pod create; FastAPI's routing, request and
    dependency machinery cost as much as the decision itself there (see benchmarks/), so these
    two routes read the body and answer with plain ASGI messages.
    """

    def __init__(self, runtime: Runtime, fallback: ASGIApp) -> None:
        self.runtime = runtime
        self.fallback = fallback
        self.steps: dict[str, Callable[[AdmissionRequest], Decision]] = {
            "/mutate": lambda r: mutate(r, runtime.policy),
            "/validate": lambda r: validate(r, runtime.policy, runtime.usage(), *runtime.nodes(),
                                            templates=runtime.templates(), pod_profiles=runtime.pod_profiles),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        decide = self.steps.get(scope.get("path", "")) if scope["type"] == "http" else None
        if decide is None or scope["method"] != "POST":
            await self.fallback(scope, receive, send)
            return
        step = scope["path"][1:]
        started = time.perf_counter()
        try:
            if self.runtime.client_certificate_required and not scope.get("state", {}).get(CLIENT_CERTIFICATE):
                raise BadReview(401, "this webhook judges only requests from the API server, which presents a "
                                     "client certificate signed by the webhook's --client-ca; this connection "
                                     "presented none")
            review = parse_review(await _read_body(scope, receive))
        except BadReview as bad:
            self.runtime.metrics.bad_requests.labels(step, str(bad.status)).inc()
            log.warning("step=%s bad request status=%s: %s", step, bad.status, bad.message)
            await _send_json(send, orjson.dumps({"error": bad.message, "status": bad.status}), bad.status)
            return
        decision = decide(review)
        if step == "validate" and (reserve := self.runtime.reserve) is not None:
            if not (decision.allowed and decision.reason == Reason.ADMITTED and decision.tenant):
                decision = await self._reserve(reserve, review, decision)   # answers at once: nothing to queue
            elif (reserved := await _unless_disconnected(self._reserve(reserve, review, decision), receive)) is None:
                log.info("step=validate uid=%s: the client went away while the quota reservation waited; "
                         "not reserved, no answer", review.uid)
                return
            else:
                decision = reserved
        body = orjson.dumps(review_response(review.uid, decision))
        seconds = time.perf_counter() - started
        self.runtime.metrics.observe(step, decision, seconds)
        _log_decision(step, review, decision, seconds)
        await _send_json(send, body)

    async def _reserve(self, reserve: Reserve, review: AdmissionRequest, decision: Decision) -> Decision:
        try:
            return await reserve(review, decision, self.runtime.policy)
        except Exception:  # an answer carrying the uid, never an allow by accident
            log.exception("quota reservation failed uid=%s", review.uid)
            return Decision.error(f"gpu-webhook failed to record the quota reservation (uid {review.uid}); retry")


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone away (the body is read: nothing else comes but that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(work: Awaitable[Decision], receive: Receive) -> Decision | None:
    """``work``'s decision, or None (``work`` cancelled) if the client disconnects first.

    uvicorn never cancels a handler whose client went away; it only reports ``http.disconnect``
    to ``receive``. The API server closes the connection when its webhook timeout expires (the
    pod is then refused, failurePolicy Fail), so a reservation still queued behind its tenant's
    round must be cancelled here: the queue drops a cancelled request (webhook/cluster/ledger.py),
    instead of reserving for a create that no longer exists (a ghost holding the quota)."""
    import asyncio

    working = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((working, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if working.done():
        return working.result()
    working.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await working
    return None


def with_client_certificate(protocol: type[Any]) -> type[Any]:
    """``protocol`` (uvicorn's HTTP protocol class), also telling the app whether the connection
    presented a verified client certificate: in ``scope["state"][CLIENT_CERTIFICATE]``.

    uvicorn puts no TLS details in the ASGI scope, but copies the protocol's ``app_state`` into
    every request's ``state``; the handshake is over when ``connection_made`` runs, so the peer
    certificate is known there, once per connection.
    """

    class ClientCertificateProtocol(protocol):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            tls = transport.get_extra_info("ssl_object")
            verified = bool(tls is not None and tls.getpeercert())
            self.app_state: dict[str, Any] = {**self.app_state, CLIENT_CERTIFICATE: verified}

    name = f"ClientCertificate{protocol.__name__}"
    ClientCertificateProtocol.__name__ = ClientCertificateProtocol.__qualname__ = name
    return ClientCertificateProtocol


def create_app(runtime: Runtime) -> ASGIApp:
    """The ASGI app for one runtime."""
    app = FastAPI(title="airflow-gpu-webhook", docs_url=None, redoc_url=None, openapi_url=None)

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

    return AdmissionEndpoints(runtime, app)
