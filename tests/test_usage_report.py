"""`gpu-webhook usage`: the operator's table of quota lines and holders."""

from __future__ import annotations

from test_tracker import managed

from airflow_gpu_webhook.cluster.tracker import UsageBook
from airflow_gpu_webhook.cluster.usage_report import usage_table


def test_the_table_shows_each_line_used_of_limit_and_the_holders(policy):
    book = UsageBook(policy)
    book.apply("ADDED", managed("kpo_h100_count2", policy, "a"))
    book.apply("ADDED", managed("executor_gpu_override", policy, "b"))
    table = usage_table(policy, book)
    assert "tenant vision\n  nvidia.com/gpu                  2 / 4      (50%)" in table
    assert "gpuEquivalent               2.125 / 6" in table
    assert "    detect_objects/" in table and "team_vision__etl/embed (airflow/" in table
    assert "tenant forecasting" in table and "holders (0 pods): none" in table


def test_one_tenant_and_a_short_top_list(policy):
    book = UsageBook(policy)
    for uid in "abc":
        book.apply("ADDED", managed("kpo_mig_1g_xcom", policy, uid))
    table = usage_table(policy, book, tenant="vision", top=2)
    assert "forecasting" not in table and "... and 1 more" in table


def test_a_pod_without_airflow_labels_is_named_by_namespace_and_name(policy):
    pod = managed("kpo_h100_count2", policy, "a")
    pod["metadata"]["labels"] = {k: v for k, v in pod["metadata"]["labels"].items() if k.startswith("gpu.platform/")}
    pod["metadata"]["annotations"] = {}
    book = UsageBook(policy)
    book.apply("ADDED", pod)
    assert f"    ml-jobs/{pod['metadata']['name']}: nvidia.com/gpu 2" in usage_table(policy, book, "vision")
