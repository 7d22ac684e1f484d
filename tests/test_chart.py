"""The Helm chart, rendered: lint, each certificate mode, the values users set, the schema's
refusals, and the guard that keeps the CEL matchConditions in step with the policy.

helm is built from its Go module (testbed/build-helm.sh, cached); no cluster is needed here.
tests/e2e/test_chart.py installs the chart on the real API server and checks that its default
render is the kustomize base, object for object.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm import CHART, Helm, build_helm, one

from airflow_gpu_webhook.cli.conditions import claim_conditions, condition_inputs, configurations, helm_values
from airflow_gpu_webhook.core.dra import claim_template, decide_template
from airflow_gpu_webhook.core.policy import load_policy, parse_policy

from conftest import DRA_POLICY_FILE, POLICY_FILE, ROOT

WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
HOOK = "helm.sh/hook"


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(build_helm(), tmp_path_factory.mktemp("helm"))


def webhooks(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [w for kind in WEBHOOK_KINDS for w in one(objs, kind)["webhooks"]]


def policy_values(tmp_path: Path, change: Callable[[dict[str, Any]], None], *, conditions: bool) -> list[str]:
    """``-f`` arguments for the reference policy changed by ``change`` (and, with ``conditions``,
    the matchConditions ``gpu-webhook policy conditions --helm-values`` prints for it)."""
    policy = yaml.safe_load(POLICY_FILE.read_text())
    change(policy)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    (tmp_path / "values.yaml").write_text(yaml.safe_dump({"policy": {"inline": policy}}))
    args = ["-f", str(tmp_path / "values.yaml")]
    if conditions:
        done = subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", "policy", "conditions",
                               "--helm-values", str(path)], capture_output=True, text=True, check=True)
        (tmp_path / "conditions.yaml").write_text(done.stdout)
        args += ["-f", str(tmp_path / "conditions.yaml")]
    return args


# ----------------------------------------------------------------------------- the chart itself
def test_the_charts_generated_files_are_in_step_with_their_sources() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync-chart.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_helm_lint_strict_passes(helm) -> None:
    done = helm.run("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_template_generates_certificates_or_reads_the_cluster() -> None:
    """genCA and friends make a new certificate on every render, lookup reads the cluster at render
    time: both churn under GitOps tools (a diff on every sync)."""
    banned = re.compile(r"\b(genCA|genSelfSignedCert|genSignedCert|genPrivateKey|lookup|randAlpha|randAlphaNum|"
                        r"randAscii|randNumeric|uuidv4|now)\b")
    for template in (CHART / "templates").iterdir():
        assert not banned.findall(template.read_text()), template.name


def test_two_renders_are_identical(helm) -> None:
    assert helm.template() == helm.template()


# ----------------------------------------------------------------------------- certificate modes
def test_certgen_renders_hook_jobs_with_their_own_minimal_rbac_and_no_ca_bundle(helm) -> None:
    objs = helm.template()
    hooks = [o for o in objs if HOOK in (o["metadata"].get("annotations") or {})]
    assert sorted(o["kind"] for o in hooks) == ["ClusterRole", "ClusterRoleBinding", "Job", "Role", "RoleBinding",
                                                "ServiceAccount"]
    for obj in hooks:
        assert obj["metadata"]["annotations"][HOOK] == "pre-install,pre-upgrade,post-install,post-upgrade"
    job = one(objs, "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "gpu-webhook-certgen"
    assert pod["containers"][0]["image"] == one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pod["containers"][0]["args"][:2] == ["certs", "ensure"]
    assert "--secret=gpu-webhook-tls" in pod["containers"][0]["args"]
    # A read-only root file system: the new pair is written to a temporary folder first.
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in pod["containers"][0]["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}} in pod["volumes"]
    role, cluster_role = one(objs, "Role", "gpu-webhook-certgen"), one(objs, "ClusterRole", "gpu-webhook-certgen")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["gpu-webhook-tls"], "verbs": ["get", "update"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    assert cluster_role["rules"] == [{"apiGroups": ["admissionregistration.k8s.io"],
                                      "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
                                      "resourceNames": ["gpu-webhook"], "verbs": ["get", "patch"]}]
    assert all("caBundle" not in w["clientConfig"] for w in webhooks(objs)), "the Job writes it; a render must not"
    assert not [o for o in objs if o["kind"] == "Secret"]


def test_cert_manager_renders_the_ca_chain_and_the_injection(helm) -> None:
    objs = helm.template("--set", "certificates.mode=certManager")
    assert not [o for o in objs if o["kind"] == "Job"]
    serving = one(objs, "Certificate", "gpu-webhook-tls")
    ca = one(objs, "Certificate", "gpu-webhook-ca")
    issuers = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Issuer"}
    assert ca["spec"]["isCA"] is True and "selfSigned" in issuers[ca["spec"]["issuerRef"]["name"]]["spec"]
    assert issuers[serving["spec"]["issuerRef"]["name"]]["spec"]["ca"]["secretName"] == ca["spec"]["secretName"]
    assert "gpu-webhook.gpu-webhook.svc" in serving["spec"]["dnsNames"]
    for kind in WEBHOOK_KINDS:
        assert one(objs, kind)["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "gpu-webhook/gpu-webhook-tls"}
    assert all("caBundle" not in w["clientConfig"] for w in webhooks(objs))


def test_cert_manager_with_an_existing_issuer_makes_only_the_serving_certificate(helm) -> None:
    objs = helm.template("--set", "certificates.mode=certManager", "--set", "certificates.certManager.issuerRef.name=corp",
                         "--set", "certificates.certManager.issuerRef.kind=ClusterIssuer")
    assert [o["kind"] for o in objs if o["apiVersion"].startswith("cert-manager.io/")] == ["Certificate"]
    assert one(objs, "Certificate")["spec"]["issuerRef"] == {"name": "corp", "kind": "ClusterIssuer"}


def test_existing_secret_puts_the_given_ca_bundle_in_both_webhooks(helm) -> None:
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n...\n").decode()
    objs = helm.template("--set", "certificates.mode=existingSecret", "--set", f"certificates.existingSecret.caBundle={bundle}",
                         "--set", "certificates.secretName=corp-tls")
    assert [w["clientConfig"]["caBundle"] for w in webhooks(objs)] == [bundle] * 4
    assert not [o for o in objs if o["kind"] in ("Job", "Secret") or o["apiVersion"].startswith("cert-manager.io/")]
    assert {"name": "tls", "secret": {"secretName": "corp-tls"}} in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]


# ----------------------------------------------------------------------------- values
def test_the_releases_namespace_is_always_excluded_and_the_opt_out_label_can_be_changed(helm) -> None:
    objs = helm.template("--set", "webhooks.excludedNamespaces={kube-system,gpu-operator}", "--set",
                         "webhooks.exemptNamespaceLabel=example.com/no-gpu-webhook", namespace="platform")
    for webhook in webhooks(objs):
        assert webhook["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "gpu-operator", "platform"]},
            {"key": "example.com/no-gpu-webhook", "operator": "DoesNotExist"}]
    objs = helm.template("--set", "webhooks.exemptNamespaceLabel=", "--set", "webhooks.excludedNamespaces=null")
    for webhook in webhooks(objs):
        assert webhook["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["gpu-webhook"]}]


def test_failure_policy_timeout_and_reinvocation_reach_the_webhooks(helm) -> None:
    objs = helm.template("--set", "webhooks.failurePolicy=Ignore", "--set", "webhooks.timeoutSeconds=10",
                         "--set", "webhooks.reinvocationPolicy=Never")
    assert [(w["failurePolicy"], w["timeoutSeconds"]) for w in webhooks(objs)] == [("Ignore", 10)] * 4
    assert one(objs, "MutatingWebhookConfiguration")["webhooks"][0]["reinvocationPolicy"] == "Never"


def test_the_webhooks_own_pods_can_be_placed_sized_and_prioritised(helm, tmp_path) -> None:
    values = {"replicas": 3, "image": {"repository": "registry.example/gpu-webhook", "tag": "1.2.3", "pullPolicy": "Always"},
              "resources": {"requests": {"cpu": "200m"}}, "priorityClassName": "system-cluster-critical",
              "topologySpread": {"whenUnsatisfiable": "DoNotSchedule"}, "nodeSelector": {"pool": "system"},
              "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
              "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                  {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}]}}},
              "logLevel": "debug"}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    deployment = one(helm.template("-f", str(tmp_path / "values.yaml")), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert deployment["spec"]["replicas"] == 3
    assert (container["image"], container["imagePullPolicy"]) == ("registry.example/gpu-webhook:1.2.3", "Always")
    # Helm merges maps: the memory request and limit stay.
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    assert "--log-level=debug" in container["args"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule"
    assert (pod["nodeSelector"], pod["tolerations"], pod["affinity"]) == (
        values["nodeSelector"], values["tolerations"], values["affinity"])


def test_without_track_usage_the_webhook_gets_no_cluster_rights_and_no_ledger(helm) -> None:
    objs = helm.template("--set", "trackUsage.enabled=false")
    assert not [o for o in objs if o["kind"] in ("ClusterRole", "Role", "Namespace") and HOOK not in
                (o["metadata"].get("annotations") or {})]
    args = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if "track-usage" in a or "ledger" in a]


def test_the_webhooks_rbac_is_the_kustomize_bases(helm) -> None:
    """Rule for rule, with the DRA reconciler's: the ResourceClaimTemplates it keeps in the tenants'
    namespaces (delete: a template's spec is immutable, so a stale one is replaced), and the
    ResourceSlices and DeviceClasses it reads."""
    base = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all((ROOT / "manifests" / "base" /
                                                                            "rbac.yaml").read_text())}
    objs = helm.template()
    for kind, name in (("ClusterRole", "gpu-webhook"), ("Role", "gpu-webhook-ledger")):
        assert one(objs, kind, name)["rules"] == base[(kind, name)]["rules"]
    assert {"apiGroups": ["resource.k8s.io"], "resources": ["resourceslices", "deviceclasses"],
            "verbs": ["list", "watch"]} in base[("ClusterRole", "gpu-webhook")]["rules"]


def test_track_usage_keeps_its_ledger_in_the_namespace_given(helm) -> None:
    objs = helm.template("--set", "trackUsage.ledgerNamespace=quota")
    assert one(objs, "Namespace")["metadata"]["name"] == "quota"
    assert one(objs, "Role", "gpu-webhook-ledger")["metadata"]["namespace"] == "quota"
    assert "--ledger-namespace=quota" in one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_client_ca_mounts_the_api_servers_ca_and_serves_with_client_ca(helm) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    objs = helm.template("--set", "clientCA.enabled=true", "--set-string", f"clientCA.cert={pem}")
    secret = one(objs, "Secret", "gpu-webhook-client-ca")
    assert base64.b64decode(secret["data"]["client-ca.crt"]).decode() == pem
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert "--client-ca=/etc/gpu-webhook/client-ca/client-ca.crt" in pod["containers"][0]["args"]
    assert {"name": "client-ca", "secret": {"secretName": "gpu-webhook-client-ca"}} in pod["volumes"]
    assert "clientCA.enabled" in helm.template_error("--set", "clientCA.enabled=true")


def test_the_network_policy_opens_the_port_to_the_given_api_server_addresses_only(helm) -> None:
    objs = helm.template("--set", "networkPolicy.apiServerCIDRs={10.0.0.10/32}")
    sources = one(objs, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert [s["ipBlock"]["cidr"] for s in sources if "ipBlock" in s] == ["10.0.0.10/32"]
    assert not [o for o in helm.template("--set", "networkPolicy.enabled=false") if o["kind"] == "NetworkPolicy"]


def test_a_url_replaces_the_service_in_both_webhooks(helm) -> None:
    objs = helm.template("--set", "webhooks.url=https://127.0.0.1:9443/")
    assert [w["clientConfig"] for w in webhooks(objs)] == [{"url": "https://127.0.0.1:9443/mutate"}] + [
        {"url": "https://127.0.0.1:9443/validate"}] * 3
    assert "webhooks/url" in helm.template_error("--set", "webhooks.url=http://127.0.0.1:9443")


# ----------------------------------------------------------------------------- the policy
def test_the_reference_policy_is_the_default_and_ships_verbatim(helm) -> None:
    config_map = one(helm.template(), "ConfigMap", "gpu-webhook-policy")
    assert config_map["data"]["policy.yaml"] == POLICY_FILE.read_text()


def test_an_inline_policy_is_shipped_and_an_existing_config_map_is_mounted(helm, tmp_path) -> None:
    def rename(policy: dict[str, Any]) -> None:
        policy["metadata"]["name"] = "mine"

    objs = helm.template(*policy_values(tmp_path, rename, conditions=False))
    assert yaml.safe_load(one(objs, "ConfigMap")["data"]["policy.yaml"])["metadata"]["name"] == "mine"
    conditions = policy_values(tmp_path, rename, conditions=True)[2:]
    objs = helm.template("--set", "policy.existingConfigMap=corp-gpu-policy", *conditions)
    assert not [o for o in objs if o["kind"] == "ConfigMap"]
    assert {"name": "policy", "configMap": {"name": "corp-gpu-policy"}} in \
        one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert "policy.existingConfigMap" in helm.template_error("--set", "policy.existingConfigMap=corp-gpu-policy")


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(policy: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = policy
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return change


def _dra_policy(policy: dict[str, Any]) -> None:
    """The reference policy replaced by docs/examples/policy-dra.yaml."""
    policy.clear()
    policy.update(yaml.safe_load(DRA_POLICY_FILE.read_text()))


def _keyless(policy: dict[str, Any]) -> None:
    policy["spec"]["profiles"]["h100-80gb"]["tolerations"] = [{"operator": "Exists"}]


POLICY_CHANGES = [
    ("a new taint key", _set("spec.profiles.h100-80gb.tolerations", [{"key": "example.com/h100", "operator": "Exists"}])),
    ("a toleration of every taint", _keyless),
    ("another profile label", _set("spec.labels.profile", "example.com/gpu-profile")),
    ("no GPU runtime class", _set("spec.gpuRuntimeClasses", [])),
    ("other GPU runtime classes", _set("spec.gpuRuntimeClasses", ["nvidia", "nvidia-cdi"])),
    ("DRA claims allowed", _set("spec.resourceClaims", "allow")),
    ("reaching pods voided", _set("spec.gpuReachingPods", "void")),
    ("a DRA claim profile", _set("spec.profiles.h100-dra", {
        "resource": "nvidia.com/gpu", "maxCount": 8, "dra": {"deviceClassName": "gpu.nvidia.com", "selector":
                                                             "device.attributes['gpu.nvidia.com'].productName == 'H100'"}})),
    ("a profile moved to DRA claims without a selector", _set("spec.profiles.a100-80gb.dra", {
        "deviceClassName": "gpu.nvidia.com", "form": "claim"})),
]


@pytest.mark.parametrize("change", [c for _, c in POLICY_CHANGES], ids=[i for i, _ in POLICY_CHANGES])
def test_a_policy_change_the_conditions_depend_on_needs_conditions_generated_for_it(helm, tmp_path, change) -> None:
    """The chart recomputes the conditions' inputs from the policy value (Go template) and compares
    them with those recorded by webhook/cli/conditions.py: refused with the shipped conditions,
    rendered with the ones generated for that policy, which are exactly the Python ones."""
    error = helm.template_error(*policy_values(tmp_path, change, conditions=False))
    assert "webhooks.matchConditions were generated for a policy with" in error
    assert "gpu-webhook policy conditions --helm-values" in error
    objs = helm.template(*policy_values(tmp_path, change, conditions=True))
    policy = parse_policy(yaml.safe_load((tmp_path / "policy.yaml").read_text()))
    expected = [w["matchConditions"] for d in configurations(policy) for w in d["webhooks"]]
    assert [w["matchConditions"] for w in webhooks(objs)] == expected
    assert condition_inputs(policy) != condition_inputs(parse_policy(yaml.safe_load(POLICY_FILE.read_text())))


def test_a_policy_change_the_conditions_do_not_depend_on_renders_with_the_shipped_ones(helm, tmp_path) -> None:
    objs = helm.template(*policy_values(tmp_path, _set("spec.tenants.vision.quota.gpuEquivalent", 2), conditions=False))
    assert yaml.safe_load(one(objs, "ConfigMap")["data"]["policy.yaml"])["spec"]["tenants"]["vision"]["quota"][
        "gpuEquivalent"] == 2


def test_a_dra_claim_profiles_own_template_is_not_sent_and_the_policy_check_sees_its_spec(helm, tmp_path) -> None:
    """The template webhook skips exactly the policy's templates, so the conditions depend on each
    claim profile's device class and selector: changing the selector needs new conditions too."""
    objs = helm.template(*policy_values(tmp_path, _dra_policy, conditions=True))
    templates = one(objs, "ValidatingWebhookConfiguration")["webhooks"][1]
    assert [c["name"] for c in templates["matchConditions"]] == ["platform-template-name", "writes-the-spec",
                                                                  "not-the-policys-template"]
    assert "'gpu-platform-a100-dra-mig-1g.10gb'" in templates["matchConditions"][2]["expression"]

    def reselect(policy: dict[str, Any]) -> None:
        _dra_policy(policy)
        policy["spec"]["profiles"]["a100-dra"]["dra"]["selector"] = "device.attributes['gpu.nvidia.com'].productName == 'X'"

    (tmp_path / "stale").mkdir()
    stale = policy_values(tmp_path / "stale", _dra_policy, conditions=True)[2:]
    error = helm.template_error(*policy_values(tmp_path, reselect, conditions=False), *stale)
    assert "webhooks.matchConditions were generated for a policy with" in error and "productName == 'X'" in error


def test_conditions_generated_before_the_template_webhook_still_render_it(helm, tmp_path) -> None:
    values = yaml.safe_load(helm_values(parse_policy(yaml.safe_load(POLICY_FILE.read_text()))))
    del values["webhooks"]["matchConditions"]["templates"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(values))
    objs = helm.template("-f", str(tmp_path / "old.yaml"))
    shipped = yaml.safe_load((CHART / "files" / "match-conditions.yaml").read_text())
    assert one(objs, "ValidatingWebhookConfiguration")["webhooks"][1]["matchConditions"] == shipped["templates"]


def test_conditions_generated_before_the_claim_webhook_still_render_it(helm, tmp_path) -> None:
    """Its conditions are the same for every policy (a platform claim's annotation), so values
    generated for a DRA policy before it existed get the shipped ones."""
    values = yaml.safe_load(helm_values(parse_policy(yaml.safe_load(POLICY_FILE.read_text()))))
    del values["webhooks"]["matchConditions"]["claims"]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(values))
    claims = one(helm.template("-f", str(tmp_path / "old.yaml")), "ValidatingWebhookConfiguration")["webhooks"][2]
    assert claims["name"] == "claims.gpu.platform"
    assert claims["matchConditions"] == claim_conditions()


# ----------------------------------------------------------------------------- DRA claim templates
def claim_templates(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs if o["kind"] == "ResourceClaimTemplate"]


def test_the_reference_policy_renders_no_claim_template(helm) -> None:
    assert claim_templates(helm.template()) == []
    assert claim_templates(helm.template("--set", "claimTemplates.extraNamespaces={team-a}")) == []


def test_without_track_usage_a_dra_policy_renders_each_claim_profiles_template_in_each_tenant_namespace(
        helm, tmp_path) -> None:
    """The objects of ``gpu-webhook dra templates`` (webhook/core/dra.py claim_template), their
    labels included (the validating step's template watch selects on managed-by), plus the
    release's: the extendedResource profile gets none, and the spec is the one the template
    webhook does not need to see."""
    objs = helm.template(*policy_values(tmp_path, _dra_policy, conditions=True), "--set", "trackUsage.enabled=false")
    profiles = ["a100-dra", "a100-dra-mig-1g.10gb"]
    assert claim_templates(objs) == [(ns, f"gpu-platform-{p}") for ns in ("airflow", "ml-jobs") for p in profiles]
    policy = load_policy(DRA_POLICY_FILE)
    rendered = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "ResourceClaimTemplate"}
    for namespace, name in rendered:
        profile = name.removeprefix("gpu-platform-")
        expected = claim_template(profile, policy.spec.profiles[profile], namespace)
        obj = rendered[(namespace, name)]
        assert (obj["apiVersion"], obj["spec"]) == (expected["apiVersion"], expected["spec"])
        assert obj["metadata"]["labels"].items() >= expected["metadata"]["labels"].items()
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "gpu-webhook"
        assert decide_template(obj, policy).reason == "platform-template-ok"


def test_with_track_usage_the_reconciler_owns_the_tenant_namespaces_and_the_chart_only_the_extra_ones(
        helm, tmp_path) -> None:
    """One owner per template: the reconciler replaces a stale template (delete, create), which a
    Helm upgrade could not (the spec is immutable), and Helm will not adopt an object it did not
    create; namespaces no tenant names are left to the chart."""
    args = policy_values(tmp_path, _dra_policy, conditions=True)
    assert claim_templates(helm.template(*args)) == []
    objs = helm.template(*args, "--set", "claimTemplates.extraNamespaces={team-b,ml-jobs}")
    assert claim_templates(objs) == [("team-b", "gpu-platform-a100-dra"), ("team-b", "gpu-platform-a100-dra-mig-1g.10gb")]


def test_extra_namespaces_get_the_templates_too_and_the_knob_turns_them_off(helm, tmp_path) -> None:
    args = [*policy_values(tmp_path, _dra_policy, conditions=True), "--set", "trackUsage.enabled=false"]
    objs = helm.template(*args, "--set", "claimTemplates.extraNamespaces={team-b,ml-jobs}")
    assert sorted({ns for ns, _ in claim_templates(objs)}) == ["airflow", "ml-jobs", "team-b"]
    assert len(claim_templates(objs)) == 6
    assert claim_templates(helm.template(*args, "--set", "claimTemplates.enabled=false")) == []


def test_extra_namespaces_with_a_policy_the_chart_cannot_read_are_refused(helm, tmp_path) -> None:
    conditions = policy_values(tmp_path, _dra_policy, conditions=True)[2:]
    error = helm.template_error("--set", "policy.existingConfigMap=corp-gpu-policy", "--set",
                                "claimTemplates.extraNamespaces={team-a}", *conditions)
    assert "claimTemplates.extraNamespaces: with policy.existingConfigMap the chart cannot read" in error
    assert "gpu-webhook dra templates" in error
    assert "claimTemplates/extraNamespaces" in helm.template_error("--set", "claimTemplates.extraNamespaces={Team_A}")


def test_helm_values_prints_the_charts_value_for_a_policy() -> None:
    policy = parse_policy(yaml.safe_load(POLICY_FILE.read_text()))
    values = yaml.safe_load(helm_values(policy))["webhooks"]["matchConditions"]
    assert values == yaml.safe_load((CHART / "files" / "match-conditions.yaml").read_text())
    assert values["for"] == condition_inputs(policy)


# ----------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("args, message", [
    (["--set", "replicas=-1"], "at '/replicas': minimum: got -1, want 1"),
    (["--set", "replicas=two"], "at '/replicas': got string, want integer"),
    (["--set", "webhooks.timeoutSeconds=31"], "at '/webhooks/timeoutSeconds': maximum: got 31, want 30"),
    (["--set", "webhooks.reinvocationPolicy=Always"], "at '/webhooks/reinvocationPolicy'"),
    (["--set", "certificates.mode=selfSigned"], "at '/certificates/mode'"),
    (["--set", "certificates.mode=existingSecret"], "at '/certificates"),
    (["--set", "logLevel=trace"], "at '/logLevel'"),
    (["--set", "replica=3"], "additional properties 'replica' not allowed"),
    (["--set", "policy.inline.spec.enforcement=audit"], "at '/policy/inline'"),
], ids=["a negative replica count", "a replica count that is no number", "a timeout over 30 s",
        "an unknown reinvocationPolicy", "an unknown certificate mode", "existingSecret without its CA bundle",
        "an unknown log level", "a misspelt value", "half a policy"])
def test_a_bad_value_fails_naming_its_path(helm, args, message) -> None:
    error = helm.template_error(*args)
    assert "values don't meet the specifications of the schema" in error and message in error, error
