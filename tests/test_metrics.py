"""Metrics: what each decision counts as, the policy's gauges, and /metrics after real admissions
through the real HTTPS server (as Prometheus would scrape it)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import jsonpatch
import pytest
from prometheus_client.parser import text_string_to_metric_families

from airflow_gpu_webhook.cluster.ledger import ROUND_RESULTS
from airflow_gpu_webhook.core.decision import Decision, Violation
from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.core.validate import decide_validation
from airflow_gpu_webhook.server.app import Runtime
from airflow_gpu_webhook.server.metrics import WebhookMetrics, ksm_name

from conftest import airflow_fixture, policy_with
from serve import WebhookServer


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the one sample ``name{labels}`` in an exposition, None when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def admissions(text: str, **labels: str) -> float | None:
    return sample(text, "gpu_webhook_admissions_total", **labels)


# --- what a decision counts as --------------------------------------------------------------------

_PATCH = ({"op": "add", "path": "/metadata/labels/a", "value": "b"},)
_DENIED = Decision.deny([Violation("unknown-profile", "no such profile")], profile="unknown", tenant="vision")

OUTCOMES = [
    ("a patched GPU pod counts as mutated under its profile and tenant",
     Decision.allow("mutated", _PATCH, profile="h100-80gb", tenant="vision"),
     {"outcome": "mutated", "reason": "mutated", "profile": "h100-80gb", "tenant": "vision"}),
    ("an already mutated GPU pod counts as allowed",
     Decision.allow("already-mutated", profile="h100-80gb", tenant="vision"),
     {"outcome": "allowed", "reason": "already-mutated", "profile": "h100-80gb", "tenant": "vision"}),
    ("a denial counts as denied under its first reason",
     _DENIED, {"outcome": "denied", "reason": "unknown-profile", "profile": "unknown", "tenant": "vision"}),
    ("a warn-mode denial counts as warned under the reason it would have been denied for",
     _DENIED.as_warning(),
     {"outcome": "warned", "reason": "unknown-profile", "profile": "unknown", "tenant": "vision"}),
    ("a pod the webhook does not manage counts under profile and tenant none",
     Decision.allow("unlabelled"), {"outcome": "allowed", "reason": "unlabelled", "profile": "none", "tenant": "none"}),
    ("an internal error counts as denied with reason internal-error",
     Decision.error("boom"), {"outcome": "denied", "reason": "internal-error", "profile": "none", "tenant": "none"}),
]


@pytest.mark.parametrize("description, decision, labels", OUTCOMES, ids=[o[0] for o in OUTCOMES])
def test_each_decision_counts_once_under_bounded_labels(description, decision, labels):
    metrics = WebhookMetrics()
    metrics.observe("mutate", decision, 0.0003)
    text = metrics.exposition().decode()
    assert admissions(text, step="mutate", **labels) == 1
    assert sample(text, "gpu_webhook_decision_seconds_count", step="mutate") == 1


def test_repeated_decisions_add_up_and_differing_tenants_stay_apart():
    metrics = WebhookMetrics()
    for tenant in ("vision", "vision", "forecasting"):
        metrics.observe("validate", Decision.allow("admitted", profile="a100-80gb", tenant=tenant), 0.001)
    text = metrics.exposition().decode()
    base = {"step": "validate", "outcome": "allowed", "reason": "admitted", "profile": "a100-80gb"}
    assert admissions(text, **base, tenant="vision") == 2
    assert admissions(text, **base, tenant="forecasting") == 1
    assert sample(text, "gpu_webhook_decision_seconds_sum", step="validate") == pytest.approx(0.003)


def test_webhook_metrics_carry_no_pod_namespace_or_dag_labels(policy):
    metrics = Runtime(policy=policy).metrics
    metrics.observe("mutate", Decision.allow("unlabelled"), 0.0001)
    metrics.bad_requests.labels("mutate", "415").inc()
    names = {label for family in text_string_to_metric_families(metrics.exposition().decode())
             for s in family.samples for label in s.labels}
    forbidden = {"pod", "namespace", "uid", "name", "dag_id", "task_id", "run_id", "try_number", "map_index"}
    assert names & forbidden == set()
    assert metrics.admissions._labelnames == ("step", "outcome", "reason", "profile", "tenant")


# --- which profile and tenant the decisions carry ------------------------------------------------

WHOSE = [
    ("a mutated MIG pod names its profile and tenant", "kpo_mig_1g_xcom", "a100-mig-1g.10gb", "vision"),
    ("an unknown profile is profile unknown, never the pod's text", "kpo_unknown_profile", "unknown", "vision"),
    ("a pod of no tenant is tenant unknown with its known profile", "kpo_no_tenant", "a100-80gb", "unknown"),
    ("a count over the maximum still names the profile and tenant", "kpo_count_over_max", "a100-mig-3g.40gb", "vision"),
    ("a CPU pod the webhook does not manage names neither", "kpo_cpu_plain", "", ""),
]


@pytest.mark.parametrize("description, case_id, profile, tenant", WHOSE, ids=[w[0] for w in WHOSE])
def test_both_steps_say_whose_pod_it_was(policy, description, case_id, profile, tenant):
    case = airflow_fixture(case_id)
    mutated = decide_mutation(case["pod"], case["namespace"], policy)
    final = jsonpatch.apply_patch(case["pod"], list(mutated.patch)) if mutated.patch else case["pod"]
    validated = decide_validation(final, case["namespace"], policy, {})
    assert (mutated.profile, mutated.tenant) == (validated.profile, validated.tenant) == (profile, tenant)


# --- the policy's gauges -------------------------------------------------------------------------

LIMITS = [
    ("vision's whole-GPU line", "vision", "nvidia.com/gpu", "nvidia_com_gpu", 4),
    ("vision's MIG 1g line", "vision", "nvidia.com/mig-1g.10gb", "nvidia_com_mig_1g_10gb", 14),
    ("vision's GPU-equivalent line", "vision", "gpuEquivalent", "gpu_equivalent", 6),
    ("forecasting's whole-GPU line", "forecasting", "nvidia.com/gpu", "nvidia_com_gpu", 2),
    ("forecasting's GPU-equivalent line", "forecasting", "gpuEquivalent", "gpu_equivalent", 3),
]


@pytest.mark.parametrize("description, tenant, line, resource, limit", LIMITS,
                         ids=[f"{x[0]} is a gauge" for x in LIMITS])
def test_every_quota_line_of_the_policy_is_a_limit_gauge(policy, description, tenant, line, resource, limit):
    text = WebhookMetrics().exposition().decode()
    assert sample(text, "gpu_webhook_quota_limit", tenant=tenant, line=line, resource=resource) is None
    runtime = Runtime(policy=policy)
    text = runtime.metrics.exposition().decode()
    assert sample(text, "gpu_webhook_quota_limit", tenant=tenant, line=line, resource=resource) == limit


def test_the_policy_name_and_profile_weights_are_exposed(policy):
    text = Runtime(policy=policy).metrics.exposition().decode()
    assert sample(text, "gpu_webhook_policy_info", policy="reference", enforcement="enforce") == 1
    assert sample(text, "gpu_webhook_profile_gpu_equivalent", profile="a100-mig-1g.10gb",
                  resource="nvidia_com_mig_1g_10gb") == 0.125
    assert sample(text, "gpu_webhook_profile_gpu_equivalent", profile="h100-80gb", resource="nvidia_com_gpu") == 1


def test_a_policy_set_on_the_runtime_shows_at_the_next_scrape(policy):
    runtime = Runtime(policy=policy)
    runtime.policy = policy_with(
        enforcement="warn",
        tenants={"vision": {"match": [{"namespace": "ml-jobs"}], "quota": {"nvidia.com/gpu": 1}}})
    text = runtime.metrics.exposition().decode()
    assert sample(text, "gpu_webhook_policy_info", policy="reference", enforcement="warn") == 1
    assert sample(text, "gpu_webhook_quota_limit", tenant="vision", line="nvidia.com/gpu",
                  resource="nvidia_com_gpu") == 1
    assert sample(text, "gpu_webhook_quota_limit", tenant="forecasting", line="nvidia.com/gpu",
                  resource="nvidia_com_gpu") is None


# --- live usage and watch sync (serve --track-usage) ---------------------------------------------

HELD = {"vision": {"nvidia.com/mig-1g.10gb": Decimal(3), "gpuEquivalent": Decimal("0.375")}}
TRACKED = [
    ("a held MIG line shows its count", "vision", "nvidia.com/mig-1g.10gb", "nvidia_com_mig_1g_10gb", 3),
    ("the weighted line shows the GPU-equivalents", "vision", "gpuEquivalent", "gpu_equivalent", 0.375),
    ("a quota line with nothing held is 0, not absent", "vision", "nvidia.com/gpu", "nvidia_com_gpu", 0),
    ("a tenant holding nothing shows 0 on each line", "forecasting", "gpuEquivalent", "gpu_equivalent", 0),
]


@pytest.mark.parametrize("description, tenant, line, resource, value", TRACKED, ids=[t[0] for t in TRACKED])
def test_tracked_usage_is_a_gauge_per_tenant_and_quota_line(policy, description, tenant, line, resource, value):
    runtime = Runtime(policy=policy)
    runtime.metrics.follow_tracking(lambda: HELD, {"pods": lambda: True})
    text = runtime.metrics.exposition().decode()
    assert sample(text, "gpu_webhook_tenant_usage", tenant=tenant, line=line, resource=resource) == value


def test_usage_is_absent_while_the_pod_watch_has_not_synced_and_sync_is_a_gauge(policy):
    runtime = Runtime(policy=policy)
    runtime.metrics.follow_tracking(lambda: None, {"pods": lambda: False, "nodes": lambda: True})
    text = runtime.metrics.exposition().decode()
    assert "gpu_webhook_tenant_usage{" not in text
    assert sample(text, "gpu_webhook_watch_synced", watch="pods") == 0
    assert sample(text, "gpu_webhook_watch_synced", watch="nodes") == 1


def test_ledger_rounds_count_from_zero_by_how_they_ended():
    metrics = WebhookMetrics()
    counted = metrics.ledger_counter(ROUND_RESULTS)
    for result in ("conflict", "written", "conflict"):
        counted(result)
    text = metrics.exposition().decode()
    assert {r: sample(text, "gpu_webhook_ledger_rounds_total", result=r) for r in ROUND_RESULTS} == {
        "written": 1, "over-quota": 0, "conflict": 2, "recheck": 0, "unavailable": 0, "watch-behind": 0}


def test_pruned_reservations_count_from_zero_by_how_they_left():
    from airflow_gpu_webhook.cluster.ledger import PRUNE_KINDS

    metrics = WebhookMetrics()
    pruned = metrics.ledger_pruned_counter(PRUNE_KINDS)
    pruned("ghost")
    text = metrics.exposition().decode()
    assert {k: sample(text, "gpu_webhook_ledger_pruned_total", how=k) for k in PRUNE_KINDS} == {
        "confirmed": 0, "ghost": 1}


def test_claim_template_writes_count_from_zero_by_result():
    from airflow_gpu_webhook.cluster.templates import RESULTS

    metrics = WebhookMetrics()
    counted = metrics.template_counter(RESULTS)
    for result in ("created", "created", "replaced"):
        counted(result)
    text = metrics.exposition().decode()
    assert {r: sample(text, "gpu_webhook_claim_templates_total", result=r) for r in RESULTS} == {
        "created": 2, "replaced": 1, "relabelled": 0, "conflict": 0, "deferred": 0, "no-namespace": 0, "failed": 0}


def test_a_file_watch_error_is_its_own_reload_result():
    metrics = WebhookMetrics()
    metrics.reloaded("policy", None)
    text = metrics.exposition().decode()
    assert sample(text, "gpu_webhook_reloads_total", what="policy", result="error") == 1
    assert sample(text, "gpu_webhook_reloads_total", what="certificate", result="error") == 0


def test_without_tracking_there_is_no_usage_or_sync_series(policy):
    text = Runtime(policy=policy).metrics.exposition().decode()
    assert "gpu_webhook_tenant_usage" not in text and "gpu_webhook_watch_synced" not in text


KSM = [
    ("a whole GPU", "nvidia.com/gpu", "nvidia_com_gpu"),
    ("a MIG slice", "nvidia.com/mig-1g.10gb", "nvidia_com_mig_1g_10gb"),
    ("a MIG slice with media extensions", "nvidia.com/mig-1g.10gb.me", "nvidia_com_mig_1g_10gb_me"),
    ("the GPU-equivalent line", "gpuEquivalent", "gpu_equivalent"),
]


@pytest.mark.parametrize("description, name, spelled", KSM,
                         ids=[f"{k[0]} is spelled as kube-state-metrics does" for k in KSM])
def test_resources_are_spelled_as_kube_state_metrics_spells_them(description, name, spelled):
    assert ksm_name(name) == spelled


# --- /metrics after real admissions over HTTPS ---------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[WebhookServer]:
    with WebhookServer(tmp_path_factory.mktemp("metrics")) as running:
        yield running


def _chain(server: WebhookServer, case_id: str) -> None:
    case = airflow_fixture(case_id)
    server.chain(case["pod"], case["namespace"])


SCRAPED = [
    ("the MIG pod was mutated once for vision", ("mutate", "mutated", "mutated", "a100-mig-1g.10gb", "vision"), 1),
    ("the mutated MIG pod was admitted once", ("validate", "allowed", "admitted", "a100-mig-1g.10gb", "vision"), 1),
    ("the unknown profile was denied as profile unknown",
     ("mutate", "denied", "unknown-profile", "unknown", "vision"), 1),
    ("the pod of no tenant was denied as tenant unknown", ("mutate", "denied", "no-tenant", "a100-80gb", "unknown"), 1),
    ("the 5-GPU pod was mutated, then denied on quota",
     ("validate", "denied", "quota-exceeded", "a100-80gb", "vision"), 1),
    ("the CPU pod passed both steps untouched", ("validate", "allowed", "unlabelled", "none", "none"), 1),
]


@pytest.fixture(scope="module")
def scraped(server) -> str:
    for case_id in ("kpo_mig_1g_xcom", "kpo_unknown_profile", "kpo_no_tenant", "kpo_quota_breaker", "kpo_cpu_plain"):
        _chain(server, case_id)
    server.client.post("/validate", content=b"a=b", headers={"Content-Type": "text/plain"})
    return server.client.get("/metrics").text


@pytest.mark.parametrize("description, labels, count", SCRAPED, ids=[s[0] for s in SCRAPED])
def test_metrics_after_real_admissions_count_each_decision(scraped, description, labels, count):
    step, outcome, reason, profile, tenant = labels
    assert admissions(scraped, step=step, outcome=outcome, reason=reason, profile=profile, tenant=tenant) == count


def test_metrics_after_real_admissions_time_every_answer_and_count_bad_requests(scraped):
    assert sample(scraped, "gpu_webhook_decision_seconds_count", step="mutate") == 5
    assert sample(scraped, "gpu_webhook_decision_seconds_count", step="validate") == 3
    assert sample(scraped, "gpu_webhook_bad_requests_total", step="validate", status="415") == 1


def test_metrics_of_the_serving_policy_are_scraped(scraped):
    assert sample(scraped, "gpu_webhook_policy_info", policy="reference", enforcement="enforce") == 1
    assert sample(scraped, "gpu_webhook_quota_limit", tenant="vision", line="nvidia.com/gpu",
                  resource="nvidia_com_gpu") == 4
