"""The Helm chart's certgen hook: keep the serving certificate's Secret and both webhook
configurations' ``caBundle`` in step, through the API server.

``gpu-webhook certs ensure`` (the hook Job, before and after every install and upgrade) calls
:func:`ensure`. A certificate is made only when the Secret is missing, unreadable, does not name
the Service, or expires (itself or its CA) within the renewal window: an upgrade with a valid
Secret changes nothing, so GitOps tools see no churn. On renewal the old CA stays in
``caBundle`` beside the new one while it is valid, so replicas still serving the old pair (a
mounted Secret is updated within a minute, then reloaded) keep being trusted.

What it may touch is what the chart's hook RBAC grants: get/create/update of that one Secret,
get/patch of the two webhook configurations of that name.

    >>> ensure(core, admission, Target("gpu-webhook", "gpu-webhook", "gpu-webhook-tls", "gpu-webhook"),
    ...        make_pair)   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from kubernetes.client.rest import ApiException

__all__ = ["RENEW_BEFORE", "Outcome", "ServingPair", "Target", "ca_bundle_for", "ensure", "renewal_reason"]

#: Renew this long before the serving certificate or its CA expires (cert-manager's default for
#: a one-year certificate is a third of it; a month leaves room for a missed upgrade or two).
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class ServingPair:
    """The PEM files of a kubernetes.io/tls Secret with its CA (``ca.crt``)."""

    ca: bytes
    cert: bytes
    key: bytes


@dataclass(frozen=True)
class Target:
    """Where the certificate lives and whom it must name."""

    namespace: str
    service: str
    secret: str
    webhook_configuration: str


@dataclass
class Outcome:
    """What :func:`ensure` did: ``reason`` is why a new pair was made (None: the Secret was kept)."""

    reason: str | None
    patched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def report(self, target: Target) -> list[str]:
        """One line per thing done, for the Job's log."""
        kept = "kept (valid, names the Service)"
        return [f"Secret {target.namespace}/{target.secret}: " + (f"new certificate ({self.reason})" if self.reason
                                                                 else kept),
                *(f"{name}: caBundle set" for name in self.patched),
                *(f"{name}: not there yet (the post-install run sets its caBundle)" for name in self.missing)]


def renewal_reason(pair: ServingPair | None, service: str, namespace: str, now: dt.datetime,
                   renew_before: dt.timedelta = RENEW_BEFORE) -> str | None:
    """Why ``pair`` must be replaced, or None when it serves ``service`` long enough."""
    if pair is None:
        return "the Secret does not exist"
    try:
        ca = x509.load_pem_x509_certificate(pair.ca)
        cert = x509.load_pem_x509_certificate(pair.cert)
        key = serialization.load_pem_private_key(pair.key, password=None)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as err:
        return f"the Secret holds no usable certificate, key and CA ({err})"
    if key.public_key() != cert.public_key():
        return "the Secret's key does not match its certificate"
    wanted = f"{service}.{namespace}.svc"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if wanted not in names:
        return f"the certificate does not name {wanted}"
    for what, expires in (("certificate", cert.not_valid_after_utc), ("CA", ca.not_valid_after_utc)):
        if expires - renew_before <= now:
            return f"the {what} expires {expires:%Y-%m-%d %H:%M} UTC, within {renew_before.days} days"
    return None


def ca_bundle_for(new_ca: bytes, old_ca: bytes | None, now: dt.datetime) -> str:
    """``caBundle``: the new CA, followed by the old one while it is still valid and differs."""
    bundle = new_ca.rstrip(b"\n") + b"\n"
    if old_ca and old_ca.strip() != new_ca.strip():
        try:
            if x509.load_pem_x509_certificate(old_ca).not_valid_after_utc > now:
                bundle += old_ca.rstrip(b"\n") + b"\n"
        except ValueError:
            pass
    return base64.b64encode(bundle).decode()


def _read_secret(core: Any, target: Target) -> tuple[ServingPair | None, bool]:
    """The Secret's pair (None if incomplete) and whether the Secret exists."""
    try:
        secret = core.read_namespaced_secret(target.secret, target.namespace)
    except ApiException as err:
        if err.status == 404:
            return None, False
        raise
    data = secret.data or {}
    if not all(k in data for k in ("ca.crt", "tls.crt", "tls.key")):
        return None, True
    return ServingPair(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key"))), True


def _write_secret(core: Any, target: Target, pair: ServingPair, exists: bool) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": target.secret, "namespace": target.namespace,
                         "labels": {"app.kubernetes.io/name": target.service,
                                    "app.kubernetes.io/part-of": "airflow-gpu-webhook",
                                    "app.kubernetes.io/managed-by": "gpu-webhook-certgen"}},
            "data": {k: base64.b64encode(v).decode() for k, v in
                     (("ca.crt", pair.ca), ("tls.crt", pair.cert), ("tls.key", pair.key))}}
    if exists:
        # A replace, not a patch: no key of an older pair may survive.
        core.replace_namespaced_secret(target.secret, target.namespace, body)
    else:
        core.create_namespaced_secret(target.namespace, body)


def _inject(admission: Any, name: str, bundle: str, outcome: Outcome) -> None:
    """Set ``caBundle`` on every webhook of both configurations named ``name`` where it differs.

    A JSON patch with a ``test`` of each webhook's name: a configuration changed between the read
    and the patch is refused by the API server (422) instead of patched at the wrong index."""
    calls = (("MutatingWebhookConfiguration", admission.read_mutating_webhook_configuration,
              admission.patch_mutating_webhook_configuration),
             ("ValidatingWebhookConfiguration", admission.read_validating_webhook_configuration,
              admission.patch_validating_webhook_configuration))
    for kind, read, patch in calls:
        try:
            config = read(name)
        except ApiException as err:
            if err.status == 404:   # before a first install: the post-install run patches it
                outcome.missing.append(f"{kind}/{name}")
                continue
            raise
        ops: list[dict[str, Any]] = []
        for i, webhook in enumerate(config.webhooks or []):
            if webhook.client_config.ca_bundle != bundle:
                ops += [{"op": "test", "path": f"/webhooks/{i}/name", "value": webhook.name},
                        {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}]
        if ops:
            patch(name, ops)
            outcome.patched.append(f"{kind}/{name}")


def ensure(core: Any, admission: Any, target: Target, make_pair: Callable[[], ServingPair], *,
           renew_before: dt.timedelta = RENEW_BEFORE, now: dt.datetime | None = None) -> Outcome:
    """Keep ``target``'s Secret valid (``make_pair`` only when it is not) and its CA in both webhook
    configurations. ``core``/``admission``: CoreV1Api and AdmissionregistrationV1Api."""
    now = now or dt.datetime.now(dt.UTC)
    pair, exists = _read_secret(core, target)
    reason = renewal_reason(pair, target.service, target.namespace, now, renew_before)
    old_ca = pair.ca if pair else None
    if reason is not None:
        pair = make_pair()
        _write_secret(core, target, pair, exists)
    assert pair is not None
    outcome = Outcome(reason)
    bundle = ca_bundle_for(pair.ca, old_ca if reason else None, now)
    if reason is None:
        # Kept: keep whatever valid older CA the bundle already carries (a renewal's overlap).
        bundle = _current_bundle(admission, target.webhook_configuration) or bundle
        if not _bundle_trusts(bundle, pair.ca):
            bundle = ca_bundle_for(pair.ca, None, now)
    _inject(admission, target.webhook_configuration, bundle, outcome)
    return outcome


def _current_bundle(admission: Any, name: str) -> str | None:
    try:
        webhooks = admission.read_mutating_webhook_configuration(name).webhooks or []
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    bundles = {w.client_config.ca_bundle for w in webhooks}
    return bundles.pop() if len(bundles) == 1 else None


def _bundle_trusts(bundle: str, ca: bytes) -> bool:
    """Whether the base64 PEM ``bundle`` carries the CA ``ca``."""
    try:
        carried = x509.load_pem_x509_certificates(base64.b64decode(bundle))
    except ValueError:
        return False
    return x509.load_pem_x509_certificate(ca) in carried
