"""Live configuration: policy and serving certificate follow their files, with no restart."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import subprocess
import sys
import time

import pytest
import yaml

from airflow_gpu_webhook.cli.certs import generate, generate_client
from airflow_gpu_webhook.server.reload import FileWatch, certificate_reloader, policy_reloader

from conftest import POLICY_FILE, airflow_fixture
from serve import WebhookServer


def test_a_watch_fires_on_new_content_only(tmp_path):
    path = tmp_path / "f"
    path.write_text("a")
    calls = []
    watch = FileWatch([path], lambda: calls.append(path.read_text()) or True)
    assert not watch.check()
    path.write_text("a")   # rewritten, same content
    assert not watch.check()
    path.write_text("b")
    assert watch.check() and calls == ["b"]
    assert not watch.check()


def _policy_copy(tmp_path, **quota):
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"]["vision"]["quota"].update(quota)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_valid_policy_is_applied_and_an_invalid_one_is_refused_once(tmp_path):
    path = _policy_copy(tmp_path)
    applied, observed = [], []
    watch = policy_reloader(path, applied.append, lambda what, ok: observed.append((what, ok)))
    _policy_copy(tmp_path, **{"nvidia.com/gpu": 1})
    assert watch.check()
    assert applied[-1].spec.tenants["vision"].quota["nvidia.com/gpu"] == 1
    path.write_text("spec: {profiles: nope}")
    assert watch.check() and len(applied) == 1
    assert not watch.check(), "the same invalid content is not retried"
    assert observed == [("policy", True), ("policy", False)]


def test_an_unexpected_error_in_the_watch_is_logged_and_counted_and_reloading_goes_on(tmp_path, caplog):
    import asyncio

    path = _policy_copy(tmp_path)
    applied, observed = [], []
    failures = iter([RuntimeError("disk on fire")])

    def apply(policy):
        if (failure := next(failures, None)) is not None:
            raise failure
        applied.append(policy)

    watch = policy_reloader(path, apply, lambda what, ok: observed.append((what, ok)), interval=0.02)

    async def go():
        task = asyncio.create_task(watch.run())
        _policy_copy(tmp_path, **{"nvidia.com/gpu": 1})   # the apply of this one raises
        await asyncio.sleep(0.2)
        _policy_copy(tmp_path, **{"nvidia.com/gpu": 2})   # and this one must still be taken
        for _ in range(100):
            if applied and applied[-1].spec.tenants["vision"].quota["nvidia.com/gpu"] == 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(go())
    assert applied[-1].spec.tenants["vision"].quota["nvidia.com/gpu"] == 2, "reloading went on after the error"
    assert ("policy", None) in observed and observed[-1] == ("policy", True)
    assert "disk on fire" in caplog.text and "polling goes on" in caplog.text


def test_a_half_written_certificate_pair_is_retried_until_it_matches(tmp_path):
    first = generate(tmp_path / "a", "s", "n")
    second = generate(tmp_path / "b", "s", "n")
    live = tmp_path / "live"
    shutil.copytree(tmp_path / "a", live)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(live / "tls.crt", live / "tls.key")
    observed = []
    watch = certificate_reloader(context, live / "tls.crt", live / "tls.key", lambda w, ok: observed.append(ok))
    shutil.copy(second.cert, live / "tls.crt")        # the key is still the old one
    assert watch.check() and observed == [False]
    shutil.copy(second.key, live / "tls.key")
    assert watch.check() and observed == [False, True]
    assert first.cert.read_bytes() != (live / "tls.crt").read_bytes()


def test_a_reloaded_serving_pair_keeps_client_certificate_verification(tmp_path):
    """serve --client-ca: the reload replaces the serving pair only, never the client CA or the mode."""
    first, second = generate(tmp_path / "a", "s", "n"), generate(tmp_path / "b", "s", "n")
    client = generate_client(tmp_path / "client")
    live = tmp_path / "live"
    shutil.copytree(tmp_path / "a", live)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client.ca_cert)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_cert_chain(live / "tls.crt", live / "tls.key")
    watch = certificate_reloader(context, live / "tls.crt", live / "tls.key")
    shutil.copy(second.cert, live / "tls.crt")
    shutil.copy(second.key, live / "tls.key")
    assert watch.check()
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert [c["subject"] for c in context.get_ca_certs()] == [((("organizationName", "airflow-gpu-webhook"),),
                                                               (("commonName", "airflow-gpu-webhook client CA"),))]
    assert first.cert.read_bytes() != (live / "tls.crt").read_bytes()


# --- for real: a running server, files changed under it ---

def _served_certificate(server: WebhookServer) -> str:
    pem = ssl.get_server_certificate(("127.0.0.1", server.port))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def _wait(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the server did not pick up the change"
        time.sleep(0.1)


@pytest.fixture
def server(tmp_path):
    with WebhookServer(tmp_path, policy=_policy_copy(tmp_path), extra_args=("--reload-interval", "0.2")) as running:
        yield running


def _validate_h100_pod(server: WebhookServer) -> dict:
    return server.chain(airflow_fixture("kpo_h100_count2")["pod"], "ml-jobs")[1]


def test_a_lowered_quota_applies_to_the_next_admission_and_a_bad_file_keeps_the_last_good(server, tmp_path):
    assert _validate_h100_pod(server)["allowed"] is True
    _policy_copy(tmp_path, **{"nvidia.com/gpu": 1})
    _wait(lambda: _validate_h100_pod(server)["allowed"] is False)
    assert "limited: 1" in _validate_h100_pod(server)["status"]["message"]
    (tmp_path / "policy.yaml").write_text("apiVersion: gpu.platform/v1alpha1\nkind: GPUPolicy\n")
    _wait(lambda: 'gpu_webhook_reloads_total{result="failed",what="policy"} 1.0' in server.client.get("/metrics").text)
    assert "limited: 1" in _validate_h100_pod(server)["status"]["message"]
    assert "policy reload refused" in server.log.read_text()


def test_a_rotated_certificate_is_served_without_a_restart_and_open_connections_keep_working(server, tmp_path):
    before = _served_certificate(server)
    kept_alive = server.client
    assert kept_alive.get("/healthz").status_code == 200        # a connection opened before rotation
    subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", "certs", "generate", "--out", str(server.certs),
                    "--service", "gpu-webhook", "--namespace", "gpu-webhook", "--force"], check=True,
                   capture_output=True)
    _wait(lambda: _served_certificate(server) != before)
    assert kept_alive.get("/healthz").status_code == 200        # the in-flight connection did not fail
    with server.client_trusting(server.certs / "ca.crt") as fresh:   # the new CA verifies the new cert
        assert fresh.get("/readyz").json()["ready"] is True
    assert server.process.poll() is None
