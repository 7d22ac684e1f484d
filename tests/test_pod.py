"""Read-only pod views: Airflow origin, dag ids, GPU quantities, label sanitising."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_gpu_webhook.core.pod import (
    airflow_dag_id,
    container_gpu_resources,
    gpu_quantity,
    is_airflow_pod,
    safe_label_value,
)

from conftest import airflow_fixture

LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


@pytest.mark.parametrize("case_id, expected", [
    ("kpo_cpu_plain", True), ("executor_cpu", True),
])
def test_airflow_pods_are_recognised_by_the_labels_airflow_sets(case_id, expected):
    assert is_airflow_pod(airflow_fixture(case_id)["pod"]) is expected


def test_a_pod_without_airflow_labels_is_not_an_airflow_pod():
    pod = airflow_fixture("kpo_cpu_plain")["pod"]
    pod["metadata"]["labels"]["kubernetes_pod_operator"] = "False"
    assert not is_airflow_pod(pod) and not is_airflow_pod({}) and not is_airflow_pod({"metadata": None})


def test_the_full_dag_id_comes_from_the_executors_annotation_and_else_the_label():
    executor = airflow_fixture("executor_gpu_override")["pod"]
    executor["metadata"]["labels"]["dag_id"] = "cut-label"
    assert airflow_dag_id(executor) == "team_vision__etl"
    long_kpo = airflow_fixture("kpo_long_dag_id")["pod"]
    assert airflow_dag_id(long_kpo).startswith("team_vision__") and len(airflow_dag_id(long_kpo)) <= 63


QUANTITIES = [
    ("digits are a count", "2", Decimal(2)),
    ("a JSON integer is a count", 2, Decimal(2)),
    ("zero is a count", "0", Decimal(0)),
    ("nine digits are the longest count", "999999999", Decimal(999999999)),
    ("ten digits are refused", "1000000000", None),
    ("a leading zero is not canonical", "02", None),
    ("a decimal point is not canonical", "2.0", None),
    ("milli units are refused", "2000m", None),
    ("an exponent is refused", "1e3", None),
    ("a suffix is refused", "1k", None),
    ("a sign is refused", "+1", None),
    ("a negative count is refused", "-1", None),
    ("NaN is refused", "NaN", None),
    ("Infinity is refused", "Infinity", None),
    ("a JSON float is refused", 2.0, None),
    ("a JSON boolean is refused", True, None),
    ("a negative JSON integer is refused", -1, None),
    ("unicode digits are refused", "\u0662", None),
    ("a trailing newline is refused", "2\n", None),
    ("a word is refused", "two", None),
    ("null is refused", None, None),
    ("a list is refused", [], None),
]


@pytest.mark.parametrize("description, raw, expected", QUANTITIES, ids=[q[0] for q in QUANTITIES])
def test_gpu_quantities_are_canonical_whole_numbers(description, raw, expected):
    assert gpu_quantity(raw) == expected


def test_a_hostile_megabyte_quantity_is_refused_quickly():
    assert gpu_quantity("9" * 1_000_000 + "x") is None
    assert gpu_quantity("9" * 1_000_000) is None


def test_gpu_resources_are_read_from_limits_and_requests_only_for_nvidia():
    container = {"resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "2"},
                               "requests": {"nvidia.com/mig-1g.10gb": "1", "memory": "1Gi"}}}
    assert container_gpu_resources(container) == {"nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "1"}
    assert container_gpu_resources({"resources": None}) == {} == container_gpu_resources({})


@pytest.mark.parametrize("value", ["vision", "a100-mig-1g.10gb", "Team Vision!", "-x-", "a" * 80, "", "日本"])
def test_label_values_are_always_valid_and_distinct_inputs_stay_distinct(value):
    import re

    safe = safe_label_value(value)
    assert re.match(LABEL_VALUE, safe) and len(safe) <= 63
    if re.match(LABEL_VALUE, value) and len(value) <= 63:
        assert safe == value
    else:
        assert safe != safe_label_value(value + "x")


def test_only_short_quantity_strings_are_cached_so_a_hostile_pod_cannot_fill_the_cache():
    from airflow_gpu_webhook.core.pod import _count_text

    _count_text.cache_clear()
    assert gpu_quantity("2") == 2 and gpu_quantity("2") == 2
    assert gpu_quantity("9" * 10_000) is None and gpu_quantity("1" * 10) is None
    info = _count_text.cache_info()
    assert (info.hits, info.currsize) == (1, 1), info
