"""Red team, session 3: the envFrom rule (webhook/core/rules.py ``_env_from_violations``) from a tenant's side."""

from __future__ import annotations

import copy
import textwrap

import pytest

from conftest import run_with_policy

# ----------------------------------------------------------------------------- Airflow parse time
#: KubernetesPodOperator has two fields that become envFrom on the base container, ``env_from`` and
#: ``configmaps``; the webhook denies both on a GPU pod, so the parse-time check must too.
ENV_FROM = textwrap.dedent("""
    import json
    from kubernetes.client import models as k8s
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.secret import Secret
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
    from airflow_gpu_webhook.airflow.policy import task_policy

    gpu = {"gpu.platform/profile": "a100-80gb"}
    cm = k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="gpu-knobs"))
    prefixed = k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name="gpu-knobs"), prefix="APP_")
    with DAG("team_vision__env_from", schedule=None):
        tasks = [
            KubernetesPodOperator(task_id="env_from", image="t", namespace="ml-jobs", labels=gpu, env_from=[cm]),
            KubernetesPodOperator(task_id="configmaps", image="t", namespace="ml-jobs", labels=gpu,
                                  configmaps=["gpu-knobs"]),
            KubernetesPodOperator(task_id="secret_env_from", image="t", namespace="ml-jobs", labels=gpu,
                                  secrets=[Secret("env", None, "gpu-knobs")]),
            KubernetesPodOperator(task_id="prefixed", image="t", namespace="ml-jobs", labels=gpu,
                                  env_from=[prefixed]),
            KubernetesPodOperator(task_id="full_pod_spec", image="t", namespace="ml-jobs", labels=gpu,
                                  full_pod_spec=k8s.V1Pod(spec=k8s.V1PodSpec(containers=[
                                      k8s.V1Container(name="base", env_from=[cm])]))),
            KubernetesPodOperator(task_id="init_container", image="t", namespace="ml-jobs", labels=gpu,
                                  init_containers=[k8s.V1Container(name="init", image="t", env_from=[cm])]),
            PythonOperator(task_id="pod_override", python_callable=lambda: None, executor_config={
                "pod_override": k8s.V1Pod(
                    metadata=k8s.V1ObjectMeta(labels=gpu),
                    spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", env_from=[cm])]))}),
        ]
    out = {}
    for task in tasks:
        try:
            task_policy(task)
            out[task.task_id] = "loaded"
        except Exception as err:
            out[task.task_id] = f"{type(err).__name__}: {err}"
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def env_from_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return run_with_policy(ENV_FROM, tmp_path_factory.mktemp("env_from"))


@pytest.mark.parametrize("task", ["env_from", "configmaps", "secret_env_from", "full_pod_spec",
                                  "init_container", "pod_override"])
def test_a_gpu_task_reading_env_from_without_a_prefix_fails_at_parse_time_as_at_admission(env_from_tasks, task):
    assert env_from_tasks[task].startswith("AirflowClusterPolicyViolation: "), env_from_tasks[task]
    assert "reads envFrom with no prefix" in env_from_tasks[task]


def test_a_gpu_task_reading_env_from_with_a_safe_prefix_loads(env_from_tasks):
    assert env_from_tasks["prefixed"] == "loaded"


# ----------------------------------------------------------------------------- admission (all held)
CONFIG_MAP = {"configMapRef": {"name": "task-env"}}


def _gpu_pod() -> dict:
    from conftest import airflow_fixture

    return copy.deepcopy(airflow_fixture("kpo_h100_count2")["pod"])


@pytest.mark.parametrize("prefix, denied", [
    (None, True), ("", True), (5, True), (["NVIDIA_"], True), ("NVIDIA_VISIBLE_DEVICES", True), ("LD_PRELOAD", True),
    # Env names are case- and byte-exact for the toolkit's getenv: these can make no risky name.
    ("nvidia_", False), ("\uff2eVIDIA_", False), ("NVIDIA_VISIBLE_DEVICES_", False), (" ", False),
])
def test_odd_env_from_prefixes(prefix, denied, policy):
    from airflow_gpu_webhook.core.rules import security_violations

    pod = _gpu_pod()
    pod["spec"]["containers"][0]["envFrom"] = [{**CONFIG_MAP, **({} if prefix is None else {"prefix": prefix})}]
    assert bool(security_violations(pod, policy, True)) is denied


def test_a_pod_that_is_a_gpu_pod_only_after_mutation_is_denied_by_the_mutating_step_too(policy):
    from airflow_gpu_webhook.core.mutate import decide_mutation

    pod = _gpu_pod()
    for container in pod["spec"]["containers"]:
        container.pop("resources", None)
    pod["spec"]["containers"][0]["envFrom"] = [CONFIG_MAP]
    decision = decide_mutation(pod, "ml-jobs", policy)
    assert not decision.allowed and "reads envFrom with no prefix" in decision.message


def test_an_ephemeral_container_with_env_from_on_a_gpu_pod_is_denied(policy):
    import jsonpatch

    from airflow_gpu_webhook.core.mutate import decide_ephemeral_mutation, decide_mutation
    from airflow_gpu_webhook.core.validate import decide_ephemeral_validation

    pod = _gpu_pod()
    pod = jsonpatch.apply_patch(pod, list(decide_mutation(pod, "ml-jobs", policy).patch))
    pod["spec"]["ephemeralContainers"] = [{"name": "debug", "image": "busybox", "envFrom": [CONFIG_MAP]}]
    pod = jsonpatch.apply_patch(pod, list(decide_ephemeral_mutation(pod, policy).patch))
    decision = decide_ephemeral_validation(pod, policy)
    assert not decision.allowed and "ephemeral container 'debug' reads envFrom" in decision.message
