"""The certgen hook's decisions, without a cluster: when a Secret's pair is kept or replaced, and
which CAs the caBundle carries. tests/e2e/test_chart.py runs the whole hook against the API server."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from airflow_gpu_webhook.cli.certs import generate
from airflow_gpu_webhook.cluster.certgen import ServingPair, ca_bundle_for, renewal_reason

NOW = dt.datetime.now(dt.UTC)


def pair(tmp: Path, service: str = "gpu-webhook", namespace: str = "gpu-webhook") -> ServingPair:
    files = generate(tmp, service, namespace)
    return ServingPair(files.ca_cert.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())


@pytest.fixture
def fresh(tmp_path: Path) -> ServingPair:
    return pair(tmp_path / "a")


def test_a_fresh_pair_naming_the_service_is_kept(fresh) -> None:
    assert renewal_reason(fresh, "gpu-webhook", "gpu-webhook", NOW) is None


def test_a_missing_secret_needs_a_pair() -> None:
    assert renewal_reason(None, "gpu-webhook", "gpu-webhook", NOW) == "the Secret does not exist"


def test_a_pair_for_another_service_is_replaced(fresh) -> None:
    assert renewal_reason(fresh, "gpu-webhook", "platform", NOW) == "the certificate does not name gpu-webhook.platform.svc"


def test_a_certificate_expiring_within_the_window_is_replaced(fresh) -> None:
    expires = x509.load_pem_x509_certificate(fresh.cert).not_valid_after_utc
    assert renewal_reason(fresh, "gpu-webhook", "gpu-webhook", expires - dt.timedelta(days=31)) is None
    reason = renewal_reason(fresh, "gpu-webhook", "gpu-webhook", expires - dt.timedelta(days=29))
    assert reason is not None and reason.startswith("the certificate expires")


def test_a_key_of_another_pair_or_a_foreign_ca_is_replaced(fresh, tmp_path) -> None:
    other = pair(tmp_path / "b")
    mixed = ServingPair(fresh.ca, fresh.cert, other.key)
    assert renewal_reason(mixed, "gpu-webhook", "gpu-webhook", NOW) == "the Secret's key does not match its certificate"
    foreign = ServingPair(other.ca, fresh.cert, fresh.key)
    assert "no usable certificate" in (renewal_reason(foreign, "gpu-webhook", "gpu-webhook", NOW) or "")
    garbage = ServingPair(b"x", fresh.cert, fresh.key)
    assert "no usable certificate" in (renewal_reason(garbage, "gpu-webhook", "gpu-webhook", NOW) or "")


def test_the_bundle_keeps_a_valid_old_ca_after_the_new_one(fresh, tmp_path) -> None:
    new = pair(tmp_path / "b")
    assert base64.b64decode(ca_bundle_for(new.ca, fresh.ca, NOW)) == new.ca + fresh.ca
    assert base64.b64decode(ca_bundle_for(new.ca, None, NOW)) == new.ca
    assert base64.b64decode(ca_bundle_for(new.ca, new.ca, NOW)) == new.ca


def test_the_bundle_drops_an_expired_old_ca(fresh, tmp_path) -> None:
    new = pair(tmp_path / "b")
    later = x509.load_pem_x509_certificate(fresh.ca).not_valid_after_utc + dt.timedelta(days=1)
    assert base64.b64decode(ca_bundle_for(new.ca, fresh.ca, later)) == new.ca
