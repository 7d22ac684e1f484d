"""Tenant resolution: the first tenant in policy order whose match fits."""

from __future__ import annotations

import pytest

from conftest import airflow_fixture, policy_with
from webhook.tenancy import describe_tenants, resolve_tenant

CASES = [
    ("a namespace match", "kpo_h100_count2", "ml-jobs", "vision"),
    ("a dag_id prefix in the shared airflow namespace", "kpo_mig_1g_xcom", "airflow", "vision"),
    ("a pod label in the shared airflow namespace", "kpo_podlabel_tenant", "airflow", "vision"),
    ("the nightly_ prefix belongs to forecasting", "kpo_nightly_a100", "airflow", "forecasting"),
    ("a long dag id cut by Airflow keeps its prefix", "kpo_long_dag_id", "airflow", "vision"),
    ("the executor's annotation gives the dag id", "executor_gpu_override", "airflow", "vision"),
    ("no match in an unknown namespace", "kpo_no_tenant", "analytics", None),
    ("a dag prefix only matches in its namespace", "kpo_nightly_a100", "ml-jobs", "vision"),
    ("a dag prefix in another namespace fits nobody", "kpo_nightly_a100", "other", None),
]


@pytest.mark.parametrize("description, case_id, namespace, tenant", CASES, ids=[c[0] for c in CASES])
def test_tenant_resolution(description, case_id, namespace, tenant, policy):
    assert resolve_tenant(airflow_fixture(case_id)["pod"], namespace, policy) == tenant


def test_the_first_fitting_tenant_wins():
    policy = policy_with(tenants={
        "first": {"match": [{"namespace": "airflow"}]},
        "second": {"match": [{"namespace": "airflow", "dagIdPrefix": "nightly_"}]},
    })
    assert resolve_tenant(airflow_fixture("kpo_nightly_a100")["pod"], "airflow", policy) == "first"


def test_the_tenant_list_reads_for_a_person(policy):
    assert describe_tenants(policy) == (
        "vision (namespace ml-jobs | namespace airflow + labels team=vision | namespace airflow + dag_id "
        "team_vision__*), forecasting (namespace airflow + dag_id nightly_*)")
