"""Development and self-managed certificates: a CA and a serving certificate for the webhook.

The API server verifies the webhook against ``caBundle``, so the serving certificate must
name the Service's DNS names (and 127.0.0.1/localhost for running outside the cluster).
ECDSA P-256 keys; the CA lives 5 years, the serving certificate 1 year (rotate by running
``certs generate`` again, or use the cert-manager overlay). Keys are written 0600.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["APISERVER_CLIENT_NAME", "CA_DAYS", "SERVING_DAYS", "CertFiles", "ca_bundle", "generate", "generate_client",
           "inject_ca_bundle", "load_documents"]

CA_DAYS = 5 * 365
SERVING_DAYS = 365
#: The common name of the client certificate the API server presents to the webhook.
APISERVER_CLIENT_NAME = "kube-apiserver"
_WEBHOOK_CONFIG_KINDS = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}


@dataclass(frozen=True)
class CertFiles:
    """Where ``generate`` wrote its files."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


def _service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use to reach a Service."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "airflow-gpu-webhook"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int,
             now: dt.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))


def _ca(now: dt.datetime, common_name: str = "airflow-gpu-webhook CA") -> tuple[ec.EllipticCurvePrivateKey,
                                                                               x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (_builder(name, name, key, CA_DAYS, now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
          usage: x509.ObjectIdentifier, now: dt.datetime,
          san: Sequence[x509.GeneralName] | None = None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A certificate signed by the CA, for serving (``SERVER_AUTH``) or as a client (``CLIENT_AUTH``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name(common_name), ca_cert.subject, key, SERVING_DAYS, now)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _serving(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, dns_names: list[str],
             ips: list[str], now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    san = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    return _leaf(ca_key, ca_cert, dns_names[0], ExtendedKeyUsageOID.SERVER_AUTH, now, san)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(path, mode)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _refuse_overwrite(files: CertFiles, force: bool, then: str) -> None:
    existing = [str(p) for p in files.__dict__.values() if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass --force to replace them (then {then})")


def _write_pair(files: CertFiles, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> CertFiles:
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.ca_key, _key_pem(ca_key), 0o600)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(files.key, _key_pem(key), 0o600)
    return files


def generate(out: Path, service: str, namespace: str, extra_dns: list[str] | None = None,
             extra_ips: list[str] | None = None, force: bool = False) -> CertFiles:
    """Write ``ca.crt ca.key tls.crt tls.key`` into ``out``; refuse to overwrite unless ``force``.

    Overwriting silently would rotate the CA under a webhook configuration still carrying
    the old ``caBundle``, and every pod create would then fail TLS verification.
    """
    files = CertFiles(out / "ca.crt", out / "ca.key", out / "tls.crt", out / "tls.key")
    _refuse_overwrite(files, force, "update the webhook configurations' caBundle")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = _ca(now)
    dns = list(dict.fromkeys(_service_names(service, namespace) + ["localhost"] + (extra_dns or [])))
    ips = list(dict.fromkeys(["127.0.0.1", "::1"] + (extra_ips or [])))
    return _write_pair(files, ca_key, ca_cert, *_serving(ca_key, ca_cert, dns, ips, now))


def generate_client(out: Path, common_name: str = APISERVER_CLIENT_NAME, force: bool = False) -> CertFiles:
    """Write ``client-ca.crt client-ca.key apiserver-client.crt apiserver-client.key`` into ``out``.

    A CA of its own (not the serving CA: a leaked serving key must not mint clients) and a
    client certificate (``CLIENT_AUTH``) for the API server to present to the webhook. The
    webhook runs with ``serve --client-ca client-ca.crt``; the API server's admission
    configuration names the client pair (certs/README.md).
    """
    files = CertFiles(out / "client-ca.crt", out / "client-ca.key", out / "apiserver-client.crt",
                      out / "apiserver-client.key")
    _refuse_overwrite(files, force, "give the API server the new client pair")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = _ca(now, "airflow-gpu-webhook client CA")
    return _write_pair(files, ca_key, ca_cert, *_leaf(ca_key, ca_cert, common_name, ExtendedKeyUsageOID.CLIENT_AUTH,
                                                       now))


def ca_bundle(ca_cert: Path) -> str:
    """The ``caBundle`` value: base64 of the CA's PEM."""
    pem = ca_cert.read_bytes()
    x509.load_pem_x509_certificate(pem)  # fail here, not in the API server, on a bad file
    return base64.b64encode(pem).decode()


def inject_ca_bundle(documents: list[Any], bundle: str, url: str | None = None) -> int:
    """Set ``caBundle`` (and, with ``url``, an https URL instead of the Service) on every webhook.

    ``url`` is the base such as ``https://127.0.0.1:8443``; each webhook keeps the path its
    Service reference had. Returns how many webhooks were changed.
    """
    changed = 0
    for doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") not in _WEBHOOK_CONFIG_KINDS:
            continue
        for webhook in doc.get("webhooks") or ():
            client = webhook.setdefault("clientConfig", {})
            client["caBundle"] = bundle
            if url is not None:
                path = (client.pop("service", None) or {}).get("path") or urlsplit(client.get("url", "")).path
                client["url"] = url.rstrip("/") + path
            changed += 1
    return changed


def load_documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
