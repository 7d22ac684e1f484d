"""Tenant resolution: the first tenant in policy order whose match fits."""

from __future__ import annotations

import pytest

from airflow_gpu_webhook.core.tenancy import (
    UserInfo,
    airflow_label_value,
    dag_id_conflict,
    describe_tenants,
    resolve_tenant,
)

from conftest import airflow_fixture, policy_with

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


# ------------------------------------------------------------- the dag_id label, as Airflow makes it
LABEL_VALUES = [
    ("a short plain id is kept", "detect_objects"),
    ("an id of exactly 63 characters is kept", "d" * 63),
    ("an id of 64 characters is cut and hashed", "d" * 64),
    ("a long id with a tenant prefix is cut and hashed", "team_vision__" + "x" * 80),
    ("an id with a slash loses it and gets a hash", "team/vision"),
    ("leading and trailing punctuation is dropped", "__nightly.run-"),
    ("unicode is dropped", "équipe_vision_ü"),
    ("an id of only punctuation becomes a hash", "---"),
    ("an empty id stays empty", ""),
]


@pytest.mark.parametrize("description, value", LABEL_VALUES, ids=[v[0] for v in LABEL_VALUES])
def test_the_dag_id_label_is_made_exactly_as_airflow_makes_it(description, value):
    from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value

    assert airflow_label_value(value) == make_safe_label_value(value)


def _with_dag_id(label: str | None, annotation: str | None) -> dict:
    pod = airflow_fixture("kpo_h100_count2")["pod"]
    pod["metadata"]["labels"].pop("dag_id", None)
    if label is not None:
        pod["metadata"]["labels"]["dag_id"] = label
    if annotation is not None:
        pod["metadata"]["annotations"] = {"dag_id": annotation}
    return pod


LONG_ID = "team_vision__" + "segmentation_" * 6
DAG_IDS = [
    ("a label alone is no conflict", "nightly_x", None, None),
    ("an annotation and its own label agree", "detect", "detect", None),
    ("a long annotation agrees with the label Airflow cut from it", airflow_label_value(LONG_ID), LONG_ID, None),
    ("an annotation naming another DAG is refused", "detect", "nightly_x",
     "annotation dag_id 'nightly_x' and label dag_id 'detect' name different DAGs"),
    ("an annotation that only shares the cut prefix is refused", airflow_label_value(LONG_ID), LONG_ID + "_other",
     "name different DAGs"),
    ("an annotation without a label is refused", None, "nightly_x", "label dag_id None"),
    ("an annotation that is not a string is refused", "detect", 7, "annotation dag_id 7"),
]


@pytest.mark.parametrize("description, label, annotation, words", DAG_IDS, ids=[d[0] for d in DAG_IDS])
def test_the_dag_id_annotation_must_agree_with_the_label(description, label, annotation, words):
    conflict = dag_id_conflict(_with_dag_id(label, annotation))
    assert (conflict is None) == (words is None)
    assert conflict is None or (conflict.reason == "dag-id-mismatch" and words in conflict.message)


# ------------------------------------------------------------------------------- the requester
SA = UserInfo("system:serviceaccount:airflow-vision:worker",
              ("system:serviceaccounts", "system:serviceaccounts:airflow-vision", "system:authenticated"))
REQUESTER_POLICY = {
    "by-account": {"match": [{"serviceAccount": "airflow-vision/worker"}]},
    "by-user": {"match": [{"username": "alice@example.com", "namespace": "airflow"}]},
    "by-group": {"match": [{"group": "gpu-forecasting", "dagIdPrefix": "nightly_"}]},
}
REQUESTERS = [
    ("a ServiceAccount match fits that account in any namespace", SA, "ml-jobs", "by-account"),
    ("a ServiceAccount match does not fit another account", UserInfo("system:serviceaccount:airflow-vision:other",
                                                                      ()), "ml-jobs", None),
    ("a username match combined with a namespace fits in that namespace", UserInfo("alice@example.com", ()),
     "airflow", "by-user"),
    ("a username match combined with a namespace does not fit elsewhere", UserInfo("alice@example.com", ()),
     "ml-jobs", None),
    ("a group match combined with a dag_id prefix fits", UserInfo("bob", ("gpu-forecasting",)), "x", "by-group"),
    ("an unknown requester fits no requester match", None, "airflow", None),
]


@pytest.mark.parametrize("description, requester, namespace, tenant", REQUESTERS, ids=[r[0] for r in REQUESTERS])
def test_tenants_matched_on_the_requester(description, requester, namespace, tenant):
    policy = policy_with(tenants=REQUESTER_POLICY)
    pod = airflow_fixture("kpo_nightly_a100")["pod"]
    assert resolve_tenant(pod, namespace, policy, requester) == tenant


def test_requester_matches_read_for_a_person():
    assert describe_tenants(policy_with(tenants=REQUESTER_POLICY)) == (
        "by-account (created by ServiceAccount airflow-vision/worker), by-user (namespace airflow + created by user "
        "alice@example.com), by-group (dag_id nightly_* + created by group gpu-forecasting)")
