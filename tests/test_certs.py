"""Certificates from our own tool: a chain the API server would accept, keys kept private."""

from __future__ import annotations

import base64
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from airflow_gpu_webhook.cli.certs import (
    SERVING_DAYS,
    ca_bundle,
    generate,
    generate_client,
    inject_ca_bundle,
    load_documents,
)

from conftest import ROOT


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("certs"), "gpu-webhook", "gpu-webhook", ["webhook.example.com"])


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_serving_certificate_names_the_service_and_loopback(files):
    san = _cert(files.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) >= {
        "gpu-webhook.gpu-webhook.svc", "gpu-webhook.gpu-webhook.svc.cluster.local", "localhost", "webhook.example.com"}
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)


def test_the_serving_certificate_is_signed_by_the_ca_for_server_auth(files):
    ca, cert = _cert(files.ca_cert), _cert(files.cert)
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert SERVING_DAYS - 1 <= lifetime.days <= SERVING_DAYS + 1


def test_the_api_servers_client_certificate_has_a_ca_of_its_own_for_client_auth(files, tmp_path):
    client = generate_client(tmp_path)
    ca, cert = _cert(client.ca_cert), _cert(client.cert)
    cert.verify_directly_issued_by(ca)
    assert ca.subject != _cert(files.ca_cert).subject, "a leaked serving CA key must not mint clients"
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH])
    assert cert.subject.rfc4514_string().startswith("CN=kube-apiserver")
    assert stat.S_IMODE(client.key.stat().st_mode) == stat.S_IMODE(client.ca_key.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError, match="give the API server the new client pair"):
        generate_client(tmp_path)


def test_private_keys_are_readable_by_the_owner_only(files):
    for key in (files.key, files.ca_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_existing_files_are_not_overwritten_without_force(files):
    before = files.ca_cert.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        generate(files.ca_cert.parent, "gpu-webhook", "gpu-webhook")
    assert files.ca_cert.read_bytes() == before
    generate(files.ca_cert.parent, "gpu-webhook", "gpu-webhook", force=True)
    assert files.ca_cert.read_bytes() != before


def test_the_ca_bundle_goes_into_every_webhook_of_the_shipped_configurations(files):
    docs = load_documents(ROOT / "manifests" / "base" / "webhook-configurations.yaml")
    assert inject_ca_bundle(docs, ca_bundle(files.ca_cert)) == 4   # pods (2), the DRA templates and claims
    for webhook in (w for doc in docs for w in doc["webhooks"]):
        client = webhook["clientConfig"]
        assert base64.b64decode(client["caBundle"]) == files.ca_cert.read_bytes()
        assert client["service"]["name"] == "gpu-webhook"


def test_a_url_replaces_the_service_and_keeps_each_path(files):
    docs = load_documents(ROOT / "manifests" / "base" / "webhook-configurations.yaml")
    inject_ca_bundle(docs, ca_bundle(files.ca_cert), url="https://127.0.0.1:9443/")
    urls = [w["clientConfig"]["url"] for d in docs for w in d["webhooks"]]
    assert urls == ["https://127.0.0.1:9443/mutate"] + ["https://127.0.0.1:9443/validate"] * 3
    assert all("service" not in w["clientConfig"] for d in docs for w in d["webhooks"])
