"""A real `gpu-webhook serve` for tests: certificates from `gpu-webhook certs generate`, a free
loopback port, an httpx client that verifies the server against the generated CA (as the API
server does), and a stop that always runs. Used by test_app.py and the e2e tests."""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import orjson
from e2e.ports import free_port

from conftest import POLICY_FILE, admission_review


def send_json(handler: Any, payload: Any, status: int = 200) -> None:
    """Answer an ``http.server`` request with ``payload`` as JSON (the stand-in servers of the tests)."""
    body = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class WebhookServer:
    """A `gpu-webhook serve` subprocess; always stopped, its log kept for failures."""

    def __init__(self, tmp: Path, policy: Path = POLICY_FILE, extra_args: tuple[str, ...] = (),
                 certs: Path | None = None, client_ca: bool | Path = False, port: int | None = None) -> None:
        """``certs``: serve an existing pair (replicas behind one Service share it), else make one.
        ``client_ca``: serve with ``--client-ca``, the client CA of ``certs generate --client`` (made
        here, or the directory it wrote, such as the testbed API server's); the test's client then
        presents the API server's client certificate."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.certs = certs or tmp / "certs"
        self.port = port or free_port()
        self.log = tmp / "serve.log"
        cli = [sys.executable, "-m", "airflow_gpu_webhook.cli.main"]
        if certs is None:
            subprocess.run([*cli, "certs", "generate", "--out", str(self.certs), "--service", "gpu-webhook",
                            "--namespace", "gpu-webhook", *(["--client"] if client_ca is True else [])],
                           check=True, capture_output=True)
        #: Where the client CA and the API server's client pair are (None: no --client-ca).
        self.client_certs = (self.certs if client_ca is True else client_ca) or None
        if self.client_certs is not None:
            extra_args = ("--client-ca", str(self.client_certs / "client-ca.crt"), *extra_args)
        self.process = subprocess.Popen(
            [*cli, "serve", "--policy", str(policy), "--tls-cert", str(self.certs / "tls.crt"),
             "--tls-key", str(self.certs / "tls.key"), "--host", "127.0.0.1", "--port", str(self.port), *extra_args],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"https://localhost:{self.port}"
        self.client = self.client_trusting(self.certs / "ca.crt")

    def client_trusting(self, ca: Path, identity: Path | None = None) -> httpx.Client:
        """An HTTPS client that verifies the server against ``ca``, as the API server does, and
        presents the client pair ``identity``.crt/.key (default: the API server's, with ``client_ca``)."""
        context = ssl.create_default_context(cafile=ca)
        identity = identity or (self.client_certs / "apiserver-client" if self.client_certs else None)
        if identity is not None:
            context.load_cert_chain(identity.with_suffix(".crt"), identity.with_suffix(".key"))
        return httpx.Client(base_url=self.url, verify=context, timeout=10)

    def wait_ready(self, limit: float = 30) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"serve not ready in {limit}s:\n{self.log.read_text()[-3000:]}")

    def __enter__(self) -> WebhookServer:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def review(self, step: str, pod: dict[str, Any], namespace: str) -> dict[str, Any]:
        """POST the pod's AdmissionReview to /mutate or /validate; the AdmissionResponse."""
        answer = self.client.post(f"/{step}", content=orjson.dumps(admission_review(pod, namespace)),
                                  headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text
        return answer.json()["response"]

    def chain(self, pod: dict[str, Any], namespace: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Mutate, then validate the mutated pod (unless denied), as the API server chains them."""
        mutated = self.review("mutate", pod, namespace)
        if not mutated["allowed"]:
            return mutated, None
        patch = orjson.loads(base64.b64decode(mutated["patch"])) if "patch" in mutated else []
        return mutated, self.review("validate", jsonpatch.apply_patch(pod, patch), namespace)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
