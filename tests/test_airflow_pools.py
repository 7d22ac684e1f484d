"""airflow/pools.py: the pools a policy implies, and a GPU task's pool and slots (pure; no Airflow)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
import yaml

from airflow_gpu_webhook.airflow.pools import (
    DEFAULT_POOL,
    SLOTS_PER_GPU,
    PoolSpec,
    import_document,
    policy_pools,
    pool_shortfalls,
    task_pool,
    tenant_bound,
)
from airflow_gpu_webhook.cli.main import main
from airflow_gpu_webhook.core.policy import Policy, load_policy, parse_policy

from conftest import POLICY_FILE

REFERENCE = load_policy(POLICY_FILE)


def with_tenants(**tenants: Any) -> Policy:
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"] = tenants
    return parse_policy(data)


def kpo_pod(profile: str, count: str | None = None, dag_id: str = "some_dag") -> dict[str, Any]:
    """A KubernetesPodOperator pod as the cluster policy builds it at parse time."""
    labels = {"gpu.platform/profile": profile, "dag_id": dag_id, "task_id": "t", "kubernetes_pod_operator": "True"}
    if count is not None:
        labels["gpu.platform/count"] = count
    return {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "base"}]}}


@pytest.mark.parametrize("quota, bound", [
    pytest.param({"gpuEquivalent": 6, "nvidia.com/gpu": 4}, Decimal(6), id="the gpuEquivalent line bounds the tenant"),
    pytest.param({"nvidia.com/gpu": 4}, None, id="a MIG resource without a line leaves the tenant unbounded"),
    pytest.param({}, None, id="no quota at all is unbounded"),
    pytest.param({"nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 8, "nvidia.com/mig-2g.20gb": 4,
                  "nvidia.com/mig-3g.40gb": 2}, Decimal(4),
                 id="every resource lined bounds the tenant by their weighted sum (1 + 8/8 + 4/4 + 2/2)"),
    pytest.param({"gpuEquivalent": 9, "nvidia.com/gpu": 1, "nvidia.com/mig-1g.10gb": 8, "nvidia.com/mig-2g.20gb": 4,
                  "nvidia.com/mig-3g.40gb": 2}, Decimal(4), id="the tighter of the two bounds wins"),
])
def test_a_tenants_bound_comes_from_its_quota_lines(quota, bound):
    policy = with_tenants(t={"match": [{"namespace": "ns"}], "quota": quota})
    assert tenant_bound(policy.spec.tenants["t"], policy) == bound


def test_the_reference_policy_implies_one_pool_per_tenant_sized_from_gpu_equivalent():
    pools = policy_pools(REFERENCE)
    assert [(p.name, p.tenant, p.slots, p.include_deferred) for p in pools] == [
        ("gpu-vision", "vision", 6 * SLOTS_PER_GPU, True), ("gpu-forecasting", "forecasting", 3 * SLOTS_PER_GPU, True)]
    assert pools[0].description.startswith("GPU quota of tenant vision: 6 GPU-equivalents x 8 slots per GPU")


def test_a_fractional_bound_rounds_the_pool_down_so_it_never_admits_over_the_quota():
    policy = with_tenants(t={"match": [{"namespace": "ns"}], "quota": {"gpuEquivalent": "0.3"}})
    assert [p.slots for p in policy_pools(policy)] == [2]   # 2.4 slots


def test_an_unbounded_tenant_gets_no_pool():
    policy = with_tenants(free={"match": [{"namespace": "ns"}]},
                          t={"match": [{"namespace": "other"}], "quota": {"gpuEquivalent": 1}})
    assert [p.name for p in policy_pools(policy)] == ["gpu-t"]


def test_the_import_document_is_what_airflow_pools_import_reads():
    document = import_document(policy_pools(REFERENCE))
    assert list(document) == ["gpu-vision", "gpu-forecasting"]
    assert set(document["gpu-vision"]) == {"slots", "description", "include_deferred"}
    assert document["gpu-forecasting"]["slots"] == 24 and document["gpu-forecasting"]["include_deferred"] is True


def test_the_command_prints_the_import_document(capsys):
    assert main(["airflow-pools", "--policy", str(POLICY_FILE)]) == 0
    assert json.loads(capsys.readouterr().out) == import_document(policy_pools(REFERENCE))


def test_the_command_fails_clearly_when_the_api_cannot_be_reached(capsys):
    assert main(["airflow-pools", "--policy", str(POLICY_FILE), "--apply", "http://127.0.0.1:9"]) == 1
    assert "could not apply the pools: PATCH http://127.0.0.1:9/api/v2/pools" in capsys.readouterr().err


ML_JOBS = "ml-jobs"   # tenant vision (reference policy)


@pytest.mark.parametrize("pods, current, expected", [
    pytest.param([(kpo_pod("a100-mig-1g.10gb"), ML_JOBS)], DEFAULT_POOL, ("gpu-vision", 1, "vision"),
                 id="one MIG 1g.10gb slice is one slot of its tenant's pool"),
    pytest.param([(kpo_pod("a100-mig-3g.40gb", "2"), ML_JOBS)], DEFAULT_POOL, ("gpu-vision", 8, "vision"),
                 id="two 3g.40gb slices weigh one GPU: 8 slots"),
    pytest.param([(kpo_pod("h100-80gb", "2"), ML_JOBS)], None, ("gpu-vision", 16, "vision"),
                 id="two H100s take 16 slots"),
    pytest.param([(kpo_pod("a100-mig-1g.10gb", dag_id="nightly_fit"), "airflow")], DEFAULT_POOL,
                 ("gpu-forecasting", 1, "forecasting"), id="the tenant is resolved as the webhook resolves it"),
    pytest.param([(kpo_pod("h100-80gb", "4"), ML_JOBS), (kpo_pod("a100-mig-1g.10gb"), ML_JOBS)], DEFAULT_POOL,
                 ("gpu-vision", 33, "vision"), id="a task with two GPU pods of one tenant takes both weights"),
    pytest.param([(kpo_pod("h100-80gb", "2"), ML_JOBS)], "etl", ("gpu-vision", 16, "vision"),
                 id="a pool the policy does not allow is replaced"),
])
def test_a_gpu_task_goes_to_its_tenants_pool(pods, current, expected):
    chosen = task_pool(pods, current, REFERENCE)
    assert chosen is not None and (chosen.pool, chosen.slots, chosen.tenant) == expected


VISION_URGENT = with_tenants(vision={"match": [{"namespace": ML_JOBS}], "quota": {"gpuEquivalent": 1},
                                     "airflowPools": ["vision-urgent"]},
                             free={"match": [{"namespace": "free"}]},
                             platform={"match": [{"namespace": "platform"}], "quota": {"gpuEquivalent": 1}})


@pytest.mark.parametrize("pods, current, policy, expected", [
    pytest.param([(kpo_pod("h100-80gb"), ML_JOBS)], "vision-urgent", VISION_URGENT, ("vision-urgent", 8),
                 id="a pool the tenant's airflowPools lists is kept, with the task's GPU weight as slots"),
    pytest.param([(kpo_pod("h100-80gb"), ML_JOBS)], "other", VISION_URGENT, ("gpu-vision", 8),
                 id="a pool it does not list is replaced"),
    pytest.param([(kpo_pod("h100-80gb", "2"), ML_JOBS)], "etl", VISION_URGENT, None,
                 id="a task heavier than its whole pool keeps its pool: the webhook refuses its pod with the quota"),
    pytest.param([(kpo_pod("h100-80gb"), "free")], "etl", VISION_URGENT, None,
                 id="a tenant with an unbounded quota has no pool: the task keeps its own"),
    pytest.param([(kpo_pod("h100-80gb"), "nowhere")], DEFAULT_POOL, VISION_URGENT, None,
                 id="a pod of no tenant keeps its pool (the webhook denies it)"),
    pytest.param([(kpo_pod("h100-8gb"), ML_JOBS)], DEFAULT_POOL, VISION_URGENT, None,
                 id="a pod without a plan (unknown profile) keeps its pool"),
    pytest.param([(kpo_pod("a100-mig-1g.10gb"), ML_JOBS), (kpo_pod("a100-mig-1g.10gb"), "platform")], DEFAULT_POOL,
                 VISION_URGENT, None, id="pods of two tenants in one task keep its pool"),
    pytest.param([], DEFAULT_POOL, VISION_URGENT, None, id="no GPU pod keeps the pool"),
    pytest.param([(kpo_pod("a100-mig-1g.10gb"), ML_JOBS)], DEFAULT_POOL,
                 with_tenants(vision={"match": [{"namespace": ML_JOBS}], "quota": {"gpuEquivalent": 1}},
                              sa={"match": [{"serviceAccount": "airflow/worker"}], "quota": {"gpuEquivalent": 1}}),
                 None, id="with a tenant matched on who creates the pod, no tenant is told at parse time"),
])
def test_a_task_keeps_its_pool_where_the_policy_cannot_or_must_not_route_it(pods, current, policy, expected):
    chosen = task_pool(pods, current, policy)
    assert (None if chosen is None else (chosen.pool, chosen.slots)) == expected


SPEC = PoolSpec("gpu-vision", "vision", 48, "d")


@pytest.mark.parametrize("existing, problem", [
    pytest.param({"gpu-vision": 48}, None, id="a pool of the policy's size is fine"),
    pytest.param({}, "Airflow pool 'gpu-vision' does not exist; GPU tasks of tenant vision will not run until it does",
                 id="a missing pool is reported"),
    pytest.param({"gpu-vision": 8}, "Airflow pool 'gpu-vision' has 8 slots; the GPU policy gives tenant vision 48: "
                                    "its GPU tasks wait longer", id="a smaller pool is reported"),
    pytest.param({"gpu-vision": 64}, "Airflow pool 'gpu-vision' has 64 slots; the GPU policy gives tenant vision 48: "
                                     "its GPU tasks beyond the quota start and are refused by the webhook",
                 id="a larger pool is reported"),
    pytest.param({"gpu-vision": -1}, "Airflow pool 'gpu-vision' has unlimited slots",
                 id="an unlimited pool is reported as larger"),
])
def test_pools_that_differ_from_the_policy_are_reported(existing, problem):
    problems = pool_shortfalls([SPEC], existing)
    assert problems == [] if problem is None else len(problems) == 1 and problems[0].startswith(problem)
