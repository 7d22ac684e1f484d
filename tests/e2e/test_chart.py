"""The Helm chart on the real API server: install, upgrade and uninstall with helm (built from its
Go module), the certgen hook Job's command run with the Job's own ServiceAccount token, a GPU pod
mutated through the installed configurations, and the chart rendering the kustomize base.

The testbed's kube-controller-manager runs no Job controller, so nothing runs a Job's pod:
:class:`JobRunner` stands in for it. For each certgen Job helm creates it runs the Job's container
args with the local ``gpu-webhook``, authenticated only by a token of the Job's ServiceAccount
(TokenRequest API), then writes the Job's status Complete (or Failed) so helm goes on, as it
would in a cluster. Nor does the Deployment's pod run: the webhook is served locally with the
certificate the hook put into the Secret, and the chart's ``webhooks.url`` points the API server
at it (the Service would need a pod network; the testbed's API server cannot reach loopback
endpoints through a Service).

The release uses its own names (``gpu-webhook-chart``) so it never meets the objects
test_manifests.py applies to the same control plane.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm import CHART, Helm, build_helm, one
from kubernetes import client
from kubernetes.client.rest import ApiException

from .conftest import TENANT_NAMESPACES, airflow_pod
from .controlplane import ControlPlane
from conftest import POLICY_FILE, ROOT
from serve import WebhookServer, free_port

pytestmark = pytest.mark.e2e

RELEASE = "gpu-webhook-chart"
NAMESPACE = "gpu-webhook-chart"
WEBHOOK_KINDS = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
#: Labels only Helm adds; everything else must be what kustomize renders.
HELM_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "app.kubernetes.io/version",
               "helm.sh/chart"}


@dataclass
class HookRun:
    job: str
    hook: str
    args: list[str]
    output: str
    returncode: int
    probes: dict[str, int] = field(default_factory=dict)


class JobRunner:
    """Runs each certgen Job of ``namespace`` as its own ServiceAccount, then completes it.

    ``probe(api)`` is called once, with the first Job's ServiceAccount client, for the RBAC checks
    that must be made while the hook's ServiceAccount exists (Helm deletes it after the hook)."""

    def __init__(self, cp: ControlPlane, namespace: str, tmp: Path,
                 probe: Callable[[client.ApiClient], dict[str, int]] | None = None) -> None:
        self.cp, self.namespace, self.tmp, self.probe = cp, namespace, tmp, probe
        self.admin = client.CoreV1Api(cp.api_client())
        self.batch = client.BatchV1Api(cp.api_client())
        self.runs: list[HookRun] = []
        self.seen: set[str] = set()

    def drive(self, helm: subprocess.Popen[str], timeout: float = 240) -> str:
        """Run Jobs until helm exits; helm's output (it must succeed)."""
        deadline = time.monotonic() + timeout
        while helm.poll() is None:
            assert time.monotonic() < deadline, "helm did not finish"
            for job in self.batch.list_namespaced_job(self.namespace).items:
                if job.metadata.uid not in self.seen and not (job.status and job.status.conditions):
                    self.seen.add(job.metadata.uid)
                    self._run(job)
            time.sleep(0.2)
        assert helm.stdout is not None
        output = helm.stdout.read()
        assert helm.returncode == 0, f"helm failed:\n{output}\nhooks: {self.runs}"
        return output

    def _token_client(self, service_account: str) -> tuple[client.ApiClient, Path]:
        token = self.admin.create_namespaced_service_account_token(
            service_account, self.namespace, {"spec": {"expirationSeconds": 600}}).status.token
        ca = self.tmp / "testbed-ca.crt"
        ca.write_bytes(self.cp.ca.pem)
        kubeconfig = self.tmp / f"{service_account}-{uuid.uuid4().hex[:6]}.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "testbed", "cluster": {"server": self.cp.server, "certificate-authority": str(ca)}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "testbed", "user": "sa"}}]}))
        config = client.Configuration(host=self.cp.server)
        config.ssl_ca_cert = str(ca)
        config.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(config), kubeconfig

    def _run(self, job: Any) -> None:
        spec = job.spec.template.spec
        container = spec.containers[0]
        api, kubeconfig = self._token_client(spec.service_account_name)
        # The image's entrypoint is gpu-webhook: the Job's args are its arguments.
        done = subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", *container.args,
                               "--kubeconfig", str(kubeconfig)], capture_output=True, text=True, timeout=120)
        run = HookRun(job.metadata.name, job.metadata.annotations["helm.sh/hook"], list(container.args),
                      done.stdout + done.stderr, done.returncode)
        if self.probe is not None and not any(r.probes for r in self.runs):
            run.probes = self.probe(api)
        api.close()
        self.runs.append(run)
        self._finish(job, succeeded=done.returncode == 0)

    def _finish(self, job: Any, *, succeeded: bool) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def condition(kind: str, reason: str) -> dict[str, str]:
            return {"type": kind, "status": "True", "reason": reason, "message": "run by tests/e2e/test_chart.py",
                    "lastProbeTime": now, "lastTransitionTime": now}

        if succeeded:
            status = {"startTime": now, "completionTime": now, "succeeded": 1, "active": 0,
                      "conditions": [condition("SuccessCriteriaMet", "CompletionsReached"),
                                     condition("Complete", "CompletionsReached")]}
        else:
            status = {"startTime": now, "failed": 1, "active": 0,
                      "conditions": [condition("FailureTarget", "BackoffLimitExceeded"),
                                     condition("Failed", "BackoffLimitExceeded")]}
        self.batch.patch_namespaced_job_status(job.metadata.name, self.namespace, {"status": status})


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def helm(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(build_helm(), tmp_path_factory.mktemp("helm"), controlplane.kubeconfig)


#: What the certgen RBAC must refuse: (what, call with the hook's CoreV1Api, AdmissionregistrationV1Api, ...).
REFUSED: list[tuple[str, Callable[[client.ApiClient], Any]]] = [
    ("list secrets", lambda api: client.CoreV1Api(api).list_namespaced_secret(NAMESPACE)),
    ("read another secret", lambda api: client.CoreV1Api(api).read_namespaced_secret("other", NAMESPACE)),
    ("delete the serving secret", lambda api: client.CoreV1Api(api).delete_namespaced_secret(
        "gpu-webhook-chart-tls", NAMESPACE, dry_run="All")),
    ("create a secret in another namespace", lambda api: client.CoreV1Api(api).create_namespaced_secret(
        "default", {"metadata": {"name": "certgen-escape"}}, dry_run="All")),
    ("list webhook configurations", lambda api: client.AdmissionregistrationV1Api(api)
        .list_validating_webhook_configuration()),
    ("read another webhook configuration", lambda api: client.AdmissionregistrationV1Api(api)
        .read_mutating_webhook_configuration("gpu-webhook")),
    ("delete its webhook configuration", lambda api: client.AdmissionregistrationV1Api(api)
        .delete_mutating_webhook_configuration(RELEASE, dry_run="All")),
    ("create a webhook configuration", lambda api: client.AdmissionregistrationV1Api(api)
        .create_validating_webhook_configuration({"metadata": {"name": "certgen-escape"}, "webhooks": []},
                                                 dry_run="All")),
    ("create a pod", lambda api: client.CoreV1Api(api).create_namespaced_pod(NAMESPACE, {
        "metadata": {"name": "certgen-pod"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
        dry_run="All")),
    ("patch the policy ConfigMap", lambda api: client.CoreV1Api(api).patch_namespaced_config_map(
        "gpu-webhook-chart-policy", NAMESPACE, {"data": {"policy.yaml": "{}"}}, dry_run="All")),
]


def refusals(api: client.ApiClient) -> dict[str, int]:
    """Each REFUSED call's HTTP status (0: it was allowed)."""
    statuses = {}
    for what, call in REFUSED:
        try:
            call(api)
            statuses[what] = 0
        except ApiException as err:
            statuses[what] = err.status
    return statuses


@dataclass
class Installed:
    runner: JobRunner
    values: list[str]
    port: int
    output: str


@pytest.fixture(scope="module")
def installed(controlplane: ControlPlane, helm: Helm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """``helm install`` in certgen mode, the hook Jobs run as their ServiceAccount; uninstalled after."""
    tmp = tmp_path_factory.mktemp("chart")
    for name in TENANT_NAMESPACES:
        controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    # As the chart's README says to label it (helm install --create-namespace does not).
    controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    controlplane.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": NAMESPACE},
                        "stringData": {"x": "y"}})
    port = free_port()
    values = ["--set", f"fullnameOverride={RELEASE}", "--set", f"trackUsage.ledgerNamespace={RELEASE}-ledger",
              "--set", f"webhooks.url=https://127.0.0.1:{port}"]
    runner = JobRunner(controlplane, NAMESPACE, tmp, probe=refusals)
    output = runner.drive(helm.popen("install", RELEASE, str(CHART), "--namespace", NAMESPACE, *values))
    yield Installed(runner, values, port, output)
    done = helm.run("uninstall", RELEASE, "--namespace", NAMESPACE)
    assert done.returncode == 0 or "not found" in done.stderr, done.stderr


def _configurations(cp: ControlPlane) -> dict[str, Any]:
    admission = client.AdmissionregistrationV1Api(cp.api_client())
    return {"MutatingWebhookConfiguration": admission.read_mutating_webhook_configuration(RELEASE),
            "ValidatingWebhookConfiguration": admission.read_validating_webhook_configuration(RELEASE)}


def _secret(cp: ControlPlane) -> Any:
    return client.CoreV1Api(cp.api_client()).read_namespaced_secret(f"{RELEASE}-tls", NAMESPACE)


# ------------------------------------------------------------- one source of truth: kustomize
def _kustomize(cp: ControlPlane, directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run([str(cp.bin_dir / "kubectl"), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def _by_identity(objs: list[dict[str, Any]]) -> dict[tuple[str, str | None, str], dict[str, Any]]:
    """Objects keyed by kind, namespace and name, less Helm's own labels; hooks left out."""
    out = {}
    for obj in objs:
        if "helm.sh/hook" in (obj["metadata"].get("annotations") or {}):
            continue
        obj = copy.deepcopy(obj)
        labels = obj["metadata"].get("labels") or {}
        for key in HELM_LABELS:
            labels.pop(key, None)
        out[(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])] = obj
    return out


def test_the_chart_with_default_values_renders_the_kustomize_base_object_for_object(controlplane, helm) -> None:
    """A change to the base or to the chart alone fails here. The one difference: the release's
    namespace is Helm's (--create-namespace), not an object of the chart."""
    base = _by_identity(_kustomize(controlplane, ROOT / "manifests"))
    chart = _by_identity(helm.template())
    assert set(base) - set(chart) == {("Namespace", None, "gpu-webhook")}
    assert set(chart) - set(base) == set()
    for key, obj in chart.items():
        assert obj == base[key], f"{key} differs between the chart and the kustomize base"


def test_the_charts_monitoring_toggles_render_manifests_monitoring(controlplane, helm) -> None:
    monitoring = _by_identity(_kustomize(controlplane, ROOT / "manifests" / "monitoring"))
    chart = _by_identity(helm.template("--set", "monitoring.serviceMonitor.enabled=true", "--set",
                                       "monitoring.prometheusRule.enabled=true", "--set",
                                       "monitoring.dashboard.enabled=true"))
    assert set(monitoring) <= set(chart)
    for key, obj in monitoring.items():
        assert chart[key] == obj, f"{key} differs between the chart and manifests/monitoring"


# ------------------------------------------------------------------------------ install
def test_install_runs_certgen_before_and_after_and_makes_one_certificate(installed) -> None:
    hooks = [(r.hook, r.returncode) for r in installed.runner.runs]
    assert len(hooks) == 2 and all(code == 0 for _, code in hooks), installed.runner.runs
    before, after = installed.runner.runs
    assert "new certificate (the Secret does not exist)" in before.output
    assert "not there yet" in before.output          # pre-install: the configurations do not exist yet
    assert "kept" in after.output and after.output.count("caBundle set") == 2, after.output


def test_the_webhook_configurations_carry_the_ca_of_the_secret(controlplane, installed) -> None:
    ca = base64.b64decode(_secret(controlplane).data["ca.crt"])
    for kind, config in _configurations(controlplane).items():
        assert {base64.b64decode(w.client_config.ca_bundle) for w in config.webhooks} == {ca}, kind
        assert all(w.failure_policy == "Fail" for w in config.webhooks)


def test_a_gpu_pod_created_through_the_api_server_is_mutated_by_the_served_webhook(controlplane, installed,
                                                                                    tmp_path) -> None:
    """The webhook served here with the certificate the hook Job put into the Secret, at the URL the
    chart registered: the API server verifies it against the caBundle the Job wrote."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for key, data in _secret(controlplane).data.items():
        (certs / key).write_bytes(base64.b64decode(data))
    core = client.CoreV1Api(controlplane.api_client())
    with WebhookServer(tmp_path / "serve", POLICY_FILE, certs=certs, client_ca=controlplane.webhook_client,
                       port=installed.port):
        pod = airflow_pod("kpo_h100_count2", f"chart-{uuid.uuid4().hex[:6]}")
        created = core.create_namespaced_pod("ml-jobs", pod)
        try:
            labels = created.metadata.labels
            assert labels["gpu.platform/managed"] == "true" and labels["gpu.platform/tenant"] == "vision"
            base = next(c for c in created.spec.containers if c.name == "base")
            assert base.resources.limits["nvidia.com/gpu"] == "2"
        finally:
            core.delete_namespaced_pod(created.metadata.name, "ml-jobs", grace_period_seconds=0)
        # The control: a CPU pod is not even sent (and would pass anyway).
        plain = core.create_namespaced_pod("ml-jobs", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"cpu-{uuid.uuid4().hex[:6]}"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, dry_run="All")
        assert "gpu.platform/managed" not in (plain.metadata.labels or {})


def test_without_the_served_webhook_gpu_pods_are_refused_not_let_through(controlplane, installed) -> None:
    """failurePolicy Fail, as shipped: the configurations really send GPU pods to the webhook."""
    pod = airflow_pod("kpo_h100_count2", f"chart-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(controlplane.api_client()).create_namespaced_pod("ml-jobs", pod, dry_run="All")
    assert "failed calling webhook" in refused.value.body


def test_pods_of_the_deployment_and_the_certgen_job_pass_pod_security_restricted(controlplane, helm, installed) -> None:
    """Dry-run pods made from both templates, as rendered with the release's values, in its namespace."""
    objs = helm.template(*installed.values, namespace=NAMESPACE, release=RELEASE)
    core = client.CoreV1Api(controlplane.api_client())
    for kind in ("Deployment", "Job"):
        template = one(objs, kind)["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "spec": template["spec"],
               "metadata": {**template["metadata"], "name": f"psa-{kind.lower()}"}}
        created = core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
        assert created.spec.containers[0].security_context.read_only_root_filesystem is True
    # The control: the namespace really enforces restricted.
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(NAMESPACE, pod, dry_run="All")
    assert 'violates PodSecurity "restricted:latest"' in json.loads(refused.value.body)["message"]


def test_the_certgen_service_account_can_do_its_job_and_nothing_else(installed) -> None:
    """The Job's command succeeded with only its ServiceAccount's token (above); these are refused."""
    probes = next(r.probes for r in installed.runner.runs if r.probes)
    assert probes == {what: 403 for what, _ in REFUSED}


# ------------------------------------------------------------------------------ upgrade
def test_an_upgrade_with_unchanged_values_changes_nothing(controlplane, helm, installed) -> None:
    secret, configs = _secret(controlplane), _configurations(controlplane)
    runs = len(installed.runner.runs)
    installed.runner.drive(helm.popen("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, *installed.values))
    upgrade = installed.runner.runs[runs:]
    assert [r.returncode for r in upgrade] == [0, 0]
    assert all("kept" in r.output and "caBundle set" not in r.output for r in upgrade), upgrade
    after = _secret(controlplane)
    assert (after.metadata.resource_version, after.data) == (secret.metadata.resource_version, secret.data)
    for kind, config in _configurations(controlplane).items():
        before = configs[kind]
        assert config.metadata.resource_version == before.metadata.resource_version, f"{kind} was written"
        assert config.webhooks == before.webhooks


def test_an_upgrade_that_changes_the_webhooks_keeps_the_ca_bundle_the_job_wrote(controlplane, helm, installed) -> None:
    """The templates leave caBundle out in certgen mode: Helm's three-way merge changes what the
    values changed and leaves the Job's caBundle alone."""
    bundles = {k: [w.client_config.ca_bundle for w in c.webhooks] for k, c in _configurations(controlplane).items()}
    runs = len(installed.runner.runs)
    installed.runner.drive(helm.popen("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, *installed.values,
                                      "--set", "webhooks.timeoutSeconds=7"))
    assert all("caBundle set" not in r.output for r in installed.runner.runs[runs:])
    for kind, config in _configurations(controlplane).items():
        assert [w.timeout_seconds for w in config.webhooks] == [7] * len(config.webhooks), kind
        assert [w.client_config.ca_bundle for w in config.webhooks] == bundles[kind], kind


def test_an_expiring_certificate_is_renewed_with_both_cas_trusted(controlplane, installed, tmp_path) -> None:
    """The hook's command (as the admin: Helm deleted the hook's ServiceAccount) with a renewal
    window longer than the certificate's life: a new pair, and a caBundle holding the new CA and the
    old (replicas still serving the old pair stay trusted until they reload)."""
    old_ca = base64.b64decode(_secret(controlplane).data["ca.crt"])
    job = installed.runner.runs[0]
    args = [a for a in job.args if not a.startswith("--renew-before-days")] + ["--renew-before-days", "400"]
    done = subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", *args, "--kubeconfig",
                           str(controlplane.kubeconfig)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "new certificate (the certificate expires" in done.stdout, done.stdout + done.stderr
    new_ca = base64.b64decode(_secret(controlplane).data["ca.crt"])
    assert new_ca != old_ca
    for config in _configurations(controlplane).values():
        assert {base64.b64decode(w.client_config.ca_bundle) for w in config.webhooks} == {new_ca + old_ca}


# ------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("values, message", [
    (["--set", "replicas=-1"], "at '/replicas': minimum: got -1, want 1"),
    (["--set", "webhooks.failurePolicy=Sometimes"], "at '/webhooks/failurePolicy'"),
    (["--set", "certificates.mode=existingSecret"], "at '/certificates"),
    (["-f", "enforcement"], "at '/policy/inline/spec/enforcement': value must be one of 'enforce', 'warn'"),
    (["-f", "no-resource"], "at '/policy/inline/spec/profiles/h100-80gb': missing property 'resource'"),
], ids=["a negative replica count", "an unknown failurePolicy", "existingSecret without its CA bundle",
        "an unknown enforcement mode", "a profile without a resource"])
def test_a_bad_value_fails_helm_install_naming_the_path(controlplane, helm, tmp_path, values, message) -> None:
    policy = yaml.safe_load(POLICY_FILE.read_text())
    if values[0] == "-f":
        if values[1] == "enforcement":
            policy["spec"]["enforcement"] = "audit"
        else:
            del policy["spec"]["profiles"]["h100-80gb"]["resource"]
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump({"policy": {"inline": policy}}))
        values = ["-f", str(path)]
    done = helm.run("install", "bad-values", str(CHART), "--namespace", "default", *values)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr and message in done.stderr, done.stderr
    assert "bad-values" not in helm.run("list", "--all", "--all-namespaces", "-q").stdout.split()


# ------------------------------------------------------------------------------ uninstall
def test_uninstall_leaves_no_webhook_configuration_behind(controlplane, helm, installed) -> None:
    done = helm.run("uninstall", RELEASE, "--namespace", NAMESPACE)
    assert done.returncode == 0, done.stderr
    admission = client.AdmissionregistrationV1Api(controlplane.api_client())
    names = [c.metadata.name for c in admission.list_mutating_webhook_configuration().items] + \
        [c.metadata.name for c in admission.list_validating_webhook_configuration().items]
    assert RELEASE not in names
    # GPU pods are no longer sent anywhere: the dry run passes untouched.
    pod = airflow_pod("kpo_h100_count2", f"chart-{uuid.uuid4().hex[:6]}")
    created = client.CoreV1Api(controlplane.api_client()).create_namespaced_pod("ml-jobs", pod, dry_run="All")
    assert "gpu.platform/managed" not in created.metadata.labels
    hooks = client.RbacAuthorizationV1Api(controlplane.api_client()).list_cluster_role(
        label_selector=f"app.kubernetes.io/instance={RELEASE}").items
    assert hooks == [], "no RBAC of the release or its hooks is left"
