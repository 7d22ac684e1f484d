"""The HTTPS server, for real: `gpu-webhook serve` with certificates from `gpu-webhook certs
generate`, called over TLS and verified against the generated CA, as kube-apiserver does."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from airflow_gpu_webhook.cli.certs import generate_client
from airflow_gpu_webhook.cli.main import GRACEFUL_SHUTDOWN_SECONDS
from airflow_gpu_webhook.server.app import MAX_BODY_BYTES

from conftest import admission_review, airflow_fixture, claim_template_review
from serve import WebhookServer


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[WebhookServer]:
    with WebhookServer(tmp_path_factory.mktemp("serve")) as running:
        yield running


def post(server: WebhookServer, path: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return server.client.post(path, content=body, headers={"Content-Type": content_type})


def review_body(case_id: str, **changes) -> tuple[bytes, str]:
    case = airflow_fixture(case_id)
    review = admission_review(case["pod"], case["namespace"], **changes)
    return orjson.dumps(review), review["request"]["uid"]


def test_a_gpu_pod_is_mutated_over_verified_tls(server):
    body, uid = review_body("kpo_mig_1g_xcom")
    answer = post(server, "/mutate", body)
    assert answer.status_code == 200
    response = answer.json()["response"]
    assert response["uid"] == uid and response["allowed"] is True
    patch = json.loads(base64.b64decode(response["patch"]))
    assert {"op": "add", "path": "/metadata/labels/gpu.platform~1managed", "value": "true"} in patch


def test_validate_denies_a_quota_breaker_with_the_quota_message(server):
    mutated, answer = server.chain(airflow_fixture("kpo_quota_breaker")["pod"], "ml-jobs")
    assert mutated["allowed"] is True
    assert answer["allowed"] is False and answer["status"]["code"] == 403
    assert answer["status"]["message"] == "exceeded quota: tenant vision, nvidia.com/gpu, requested: 5, used: 0, limited: 4"


def test_a_dry_run_gets_the_same_decision(server):
    wet, _ = review_body("kpo_unknown_profile")
    dry, _ = review_body("kpo_unknown_profile", dry_run=True)
    assert post(server, "/mutate", wet).json()["response"]["status"] == \
        post(server, "/mutate", dry).json()["response"]["status"]


@pytest.mark.parametrize("quantity", ["NaN", "Infinity", "1e3"])
def test_a_gpu_quantity_of_nan_or_infinity_is_a_clear_403_never_a_500(server, quantity):
    pod = airflow_fixture("kpo_unlabelled_gpu")["pod"]
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = quantity
    answer = post(server, "/validate", orjson.dumps(admission_review(pod, "ml-jobs"))).json()["response"]
    assert answer["allowed"] is False and answer["status"]["code"] == 403
    assert f"asks for nvidia.com/gpu: '{quantity}' in limits, which is not a whole number" in answer["status"]["message"]


def test_a_cpu_pod_is_allowed_without_a_patch(server):
    body, _ = review_body("kpo_cpu_plain")
    response = post(server, "/validate", body).json()["response"]
    assert response["allowed"] is True and "patch" not in response


BAD = [
    ("malformed JSON is a 400", b'{"apiVersion": "admission.k8s.io/v1", ', "application/json", 400, "not valid JSON"),
    ("a wrong apiVersion is a 400", b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}',
     "application/json", 400, "expected apiVersion admission.k8s.io/v1"),
    ("a non-Pod is a 400", None, "application/json", 400, "only core/v1 Pods"),
    ("a form post is a 415", b"a=b", "application/x-www-form-urlencoded", 415, "Content-Type must be application/json"),
    ("JSON with a charset is fine", None, "application/json; charset=utf-8", 200, None),
]


@pytest.mark.parametrize("description, body, content_type, status, words", BAD, ids=[b[0] for b in BAD])
def test_requests_the_webhook_cannot_read_get_a_clear_4xx(server, description, body, content_type, status, words):
    if body is None:
        review = json.loads(review_body("kpo_cpu_plain")[0])
        if status == 400:
            review["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
        body = orjson.dumps(review)
    answer = post(server, "/mutate", body, content_type)
    assert answer.status_code == status
    if words:
        assert words in answer.json()["error"]


def test_a_body_over_the_cap_is_a_413_by_its_length(server):
    answer = post(server, "/validate", b" " * (MAX_BODY_BYTES + 1))
    assert answer.status_code == 413 and "at most" in answer.json()["error"]


def test_a_chunked_body_over_the_cap_is_a_413_while_reading(server):
    def chunks():
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b" " * 65536

    answer = server.client.post("/validate", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413


@pytest.mark.parametrize("method, path, status", [("GET", "/mutate", 404), ("PUT", "/validate", 404),
                                                  ("POST", "/healthz", 405), ("GET", "/nope", 404)])
def test_other_methods_and_paths_get_a_4xx_not_a_500(server, method, path, status):
    assert server.client.request(method, path).status_code == status


def test_a_client_that_does_not_trust_the_ca_is_refused_by_tls(server):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(server.url + "/healthz", verify=ssl.create_default_context())


def test_health_readiness_and_metrics(server):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").json() == {"ready": True, "policy": "reference"}
    post(server, "/mutate", review_body("kpo_unknown_profile")[0])
    post(server, "/mutate", b"a=b", "text/plain")
    metrics = server.client.get("/metrics").text
    assert 'gpu_webhook_admissions_total{outcome="denied",profile="unknown",reason="unknown-profile",step="mutate",tenant="vision"}' in metrics
    assert 'gpu_webhook_bad_requests_total{status="415",step="mutate"}' in metrics
    assert "gpu_webhook_decision_seconds_bucket" in metrics


def test_a_resource_claim_template_is_judged_on_validate_and_counted_by_its_reason(server):
    """The reference policy has no DRA profile, so no template may take a platform name."""
    template = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
                "metadata": {"name": "gpu-platform-a100-80gb", "namespace": "ml-jobs"},
                "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                    "deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 8}}]}}}}
    review = claim_template_review(template, "ml-jobs")
    response = post(server, "/validate", orjson.dumps(review)).json()["response"]
    assert (response["uid"], response["allowed"], response["status"]["code"]) == (review["request"]["uid"], False, 403)
    assert "'gpu-platform-a100-80gb' is no DRA profile's template; choose another name" in response["status"]["message"]
    mine = claim_template_review({**template, "metadata": {"name": "my-gpus", "namespace": "ml-jobs"}}, "ml-jobs")
    assert post(server, "/validate", orjson.dumps(mine)).json()["response"]["allowed"] is True
    assert post(server, "/mutate", orjson.dumps(review)).json()["response"] == {"uid": review["request"]["uid"],
                                                                                  "allowed": True}
    metrics = server.client.get("/metrics").text
    for reason, step, outcome in (("platform-template", "validate", "denied"),
                                  ("not-platform-template", "validate", "allowed"), ("not-pod", "mutate", "allowed")):
        assert (f'gpu_webhook_admissions_total{{outcome="{outcome}",profile="none",reason="{reason}",step="{step}",'
                f'tenant="none"}} 1.0') in metrics
    time.sleep(0.2)
    assert "namespace=ml-jobs resourceclaimtemplate=gpu-platform-a100-80gb allowed=False" in server.log.read_text()


def test_the_server_logs_one_line_per_decision(server):
    post(server, "/mutate", review_body("kpo_no_tenant")[0])
    time.sleep(0.2)
    assert "step=mutate" in server.log.read_text() and "reason=no-tenant" in server.log.read_text()


def test_the_server_runs_on_uvloop_and_httptools(server):
    """The fast paths uvicorn picks itself; ``asyncio.run`` would silently take the stdlib loop,
    which halved the reviews/s (benchmarks/)."""
    assert "event loop uvloop.Loop, HTTP protocol HttpToolsProtocol" in server.log.read_text()


def _tickets_received(server: WebhookServer) -> bool:
    """Whether a TLS 1.3 handshake with ``server``, and one request on it, brought a session ticket."""
    import socket

    context = ssl.create_default_context(cafile=server.certs / "ca.crt")
    with socket.create_connection(("127.0.0.1", server.port)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.3"
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            answer += tls.recv(4096)   # tickets come after the handshake, read with the answer
        return tls.session is not None and tls.session.has_ticket


def test_the_server_sends_no_session_tickets(server):
    """The API server's webhook client keeps no TLS session cache (client-go), so a ticket is
    never used; OpenSSL makes two per handshake by default, which cost the server a third of
    a new connection's CPU with --client-ca (benchmarks/handshake.py)."""
    assert not _tickets_received(server)


# ------------------------------------------------------------------ serve --client-ca: only the API server
@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory) -> Iterator[WebhookServer]:
    with WebhookServer(tmp_path_factory.mktemp("mtls"), client_ca=True) as running:
        yield running


@pytest.fixture(scope="module")
def foreign_client(tmp_path_factory) -> Path:
    """A valid client pair from another CA, made by the same command."""
    out = tmp_path_factory.mktemp("foreign")
    generate_client(out)
    return out / "apiserver-client"


def _admissions(server: WebhookServer) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in server.client.get("/metrics").text.splitlines()
               if line.startswith("gpu_webhook_admissions_total{"))


def test_the_api_servers_client_certificate_gets_its_pods_judged(mtls_server):
    body, uid = review_body("kpo_h100_count2")
    answer = post(mtls_server, "/validate", body)
    assert answer.status_code == 200 and answer.json()["response"]["uid"] == uid
    assert "HTTP protocol ClientCertificateHttpToolsProtocol" in mtls_server.log.read_text()


def test_a_connection_without_a_client_certificate_is_refused_before_judging(mtls_server):
    before = _admissions(mtls_server)
    # Every client is closed: the server's graceful stop waits for open TLS connections.
    with httpx.Client(base_url=mtls_server.url, timeout=10,
                      verify=ssl.create_default_context(cafile=mtls_server.certs / "ca.crt")) as anonymous:
        for step in ("/mutate", "/validate"):
            answer = anonymous.post(step, content=review_body("kpo_h100_count2")[0],
                                    headers={"Content-Type": "application/json"})
            assert answer.status_code == 401 and "presented none" in answer.json()["error"]
        assert anonymous.get("/readyz").status_code == 200, "the kubelet's probes present no certificate"
    assert _admissions(mtls_server) == before
    assert 'gpu_webhook_bad_requests_total{status="401",step="validate"} 1.0' in mtls_server.client.get("/metrics").text


def test_a_client_certificate_from_another_ca_gets_no_connection(mtls_server, foreign_client):
    before = _admissions(mtls_server)
    with mtls_server.client_trusting(mtls_server.certs / "ca.crt", identity=foreign_client) as forger, \
            pytest.raises(httpx.TransportError):
        forger.post("/validate", content=review_body("kpo_h100_count2")[0], headers={"Content-Type": "application/json"})
    assert _admissions(mtls_server) == before


def test_serve_stops_on_sigterm_while_the_api_server_keeps_a_connection_open(tmp_path):
    """The API server keeps its connections to the webhook alive (and ours outlive them, by
    design). A rollout's SIGTERM must still end the process within the graceful-shutdown bound,
    not wait until the kubelet kills it at terminationGracePeriodSeconds."""
    server = WebhookServer(tmp_path)
    server.wait_ready()
    assert server.client.get("/healthz").status_code == 200   # a kept-alive TLS connection stays open
    started = time.monotonic()
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(GRACEFUL_SHUTDOWN_SECONDS + 10)
    finally:
        server.client.close()
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
    assert time.monotonic() - started < GRACEFUL_SHUTDOWN_SECONDS + 10
