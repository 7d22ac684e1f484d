"""Airflow cluster policy: a GPU task the webhook would refuse fails when its DAG is parsed.

Registered under the pluggy entry-point group ``airflow.policy`` (see ``pyproject.toml``), so
``pip install airflow-gpu-webhook[airflow]`` next to Airflow is the whole set-up: Airflow loads
the group at start-up and calls :func:`task_policy` for every task of every DAG it parses. A
task whose pod the webhook would refuse raises ``AirflowClusterPolicyViolation``; the DAG file
then shows as an import error, with the webhook's own words, before anything runs::

    AirflowClusterPolicyViolation: task 'train' in DAG 'team_vision__train' (KubernetesPodOperator pod):
    gpu.platform/profile 'h100-8gb' is not a known GPU profile; known profiles: a100-80gb, ...

This module makes no decision. It turns the task into the raw pod dict the webhook would see
(:func:`_kpo_pod`, :func:`_executor_pod`) and runs the webhook's pure code on it: the mutation,
then the validation of the mutated pod, as the API server chains them (:func:`_denial`).

What it cannot know at parse time, it does not guess:
- quota: usage is a run-time fact, so ``quota-exceeded`` is never reported here;
- Jinja templates (a string with ``{{`` or ``{%``) and the expanded arguments of a mapped task:
  dropped from the pod; a templated or expanded profile or count label skips the task, a
  templated label or namespace skips the tenant check (a tenant may match on either);
- a KubernetesPodOperator without ``namespace``: its pod lands in the connection's or the
  worker's namespace, known only at run time, so the tenant check is skipped;
- who creates the pod (the requester, read by ``serviceAccount``/``username``/``group``
  tenant matches): known only to the API server, so with such a tenant in the policy the
  tenant check is skipped for every task;
- ``pod_template_file`` of the operator and the executor: files read on the worker; only the
  task's own fields are checked.

A task whose pods pass goes to its tenant's GPU pool (:mod:`.pools`): ``task.pool`` becomes
``gpu-<tenant>`` and ``task.pool_slots`` its GPU weight, where the tenant is known at parse time
(docs/pools.md); ``[gpu_webhook] assign_pools = False`` turns that off. With ``[gpu_webhook]
airflow_api_url`` set, a pool missing or sized unlike the policy is logged as a warning.

Configuration, in Airflow's own config: ``[gpu_webhook] policy_file``
(``AIRFLOW__GPU_WEBHOOK__POLICY_FILE``). Unset: the check is off, said once in the log. A
policy file that cannot be used raises ``AirflowClusterPolicyError`` naming the file for every
DAG with a Kubernetes task: the platform's bug, but a silent pass would let those DAGs believe
they were checked. The policy is loaded once and reloaded when the file's mtime changes (a
mounted ConfigMap is replaced in place). With ``enforcement: warn`` the violations are logged as
warnings and the DAG loads, as the webhook lets the pod through with warnings.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

# Imported by Airflow's settings before it loads this entry point: no start-up cost. Everything
# else is imported inside the functions, so `import airflow` stays fast for every process.
from airflow.policies import hookimpl

from ..core.decision import Reason  # stdlib only: enum and dataclasses

__all__ = ["ASSIGN_POOLS", "CONF_OPTION", "CONF_SECTION", "task_policy"]

CONF_SECTION = "gpu_webhook"
CONF_OPTION = "policy_file"
#: ``False`` leaves every task's pool as the DAG says (default ``True``: GPU tasks wait in their tenant's pool).
ASSIGN_POOLS = "assign_pools"
#: The Airflow API server whose pools the parse-time check reads (unset: pools are not checked).
API_URL = "airflow_api_url"
API_TOKEN = "airflow_api_token"
#: How long one process trusts a read of the pools, in seconds.
POOLS_TTL = 60

log = logging.getLogger("gpu_webhook.airflow_policy")

_TEMPLATE = re.compile(r"\{\{|\{%")
_KPO_MODULE = "airflow.providers.cncf.kubernetes.operators.pod"
#: The operator fields the webhook's decision reads (directly, or through Airflow's pod merge).
_KPO_FIELDS = ("namespace", "labels", "annotations", "env_vars", "env_from", "configmaps", "container_resources",
               "container_security_context", "volumes", "volume_mounts", "node_selector", "tolerations",
               "init_containers", "base_container_name", "full_pod_spec", "pod_template_dict", "secrets")
#: Reasons never reported at parse time: usage is a run-time fact.
_RUN_TIME_ONLY = frozenset({Reason.QUOTA_EXCEEDED})
_REQUESTER_UNKNOWN = frozenset({Reason.NO_TENANT})


@dataclass(frozen=True)
class _TaskPod:
    """A pod a task will create, as the webhook would see it, and what cannot be known yet."""

    kind: str
    pod: dict[str, Any]
    namespace: str
    unknown: frozenset[Reason]   # violation reasons that depend on run-time values


@hookimpl
def task_policy(task: Any) -> None:
    """Raise ``AirflowClusterPolicyViolation`` when the webhook would refuse a pod of ``task``; else route
    it to its tenant's GPU pool."""
    if not _is_kpo(task) and _pod_override(task) is None:
        _leave_gpu_pool(task)
        return
    policy = _configured_policy()
    if policy is None:
        return
    pods = list(_task_pods(task, policy))
    problems = [f"task {task.task_id!r} in DAG {task.dag_id!r} ({p.kind}): {message}"
                for p in pods if (message := _denial(p, policy))]
    if not problems:
        _assign_pool(task, pods, policy)
        return
    if policy.spec.enforcement == "warn":
        for problem in problems:
            log.warning("[gpu-webhook warn-only] %s", problem)
        return
    from airflow.exceptions import AirflowClusterPolicyViolation

    raise AirflowClusterPolicyViolation("; ".join(problems))


def _denial(task_pod: _TaskPod, policy: Any) -> str:
    """The webhook's denial message for the pod, less what only run time can tell ("" if none)."""
    import jsonpatch

    from ..core.decision import Decision
    from ..core.mutate import decide_mutation
    from ..core.validate import decide_validation

    pod, namespace = task_pod.pod, task_pod.namespace
    decision = decide_mutation(pod, namespace, policy)
    if decision.allowed:
        final = jsonpatch.apply_patch(pod, list(decision.patch)) if decision.patch else pod
        decision = decide_validation(final, namespace, policy, usage={})
    # A tenant matched on the requester (who creates the pod) cannot be decided before run time.
    ignored = _RUN_TIME_ONLY | task_pod.unknown | (_REQUESTER_UNKNOWN if policy.reads_requester else frozenset())
    kept = [v for v in decision.violations if v.reason not in ignored]
    return Decision.deny(kept).message if kept else ""


def _assign_pool(task: Any, pods: list[_TaskPod], policy: Any) -> None:
    """Route the task to its tenant's GPU pool with its GPU weight as slots (``[gpu_webhook] assign_pools``).

    Left as it is where the tenant cannot be told before run time (:func:`.pools.task_pool`).
    """
    from airflow.configuration import conf

    from .pools import task_pool

    if not pods or not conf.getboolean(CONF_SECTION, ASSIGN_POOLS, fallback=True):
        return
    known = [(p.pod, p.namespace) for p in pods if "no-tenant" not in p.unknown]
    chosen = task_pool(known, task.pool, policy) if len(known) == len(pods) else None
    if chosen is None:
        log.debug("task %s: GPU pool not assigned at parse time; the webhook judges its pod", task.task_id)
        _leave_gpu_pool(task, policy)
        return
    if task.pool != chosen.pool:
        log.debug("task %s: pool %s -> %s (%d slots)", task.task_id, task.pool, chosen.pool, chosen.slots)
    task.pool, task.pool_slots = chosen.pool, chosen.slots
    for problem in _pool_problems(chosen.pool, policy):
        log.warning("[gpu-webhook] task %r in DAG %r waits in GPU pool %s: %s", task.task_id, task.dag_id,
                    chosen.pool, problem)


def _leave_gpu_pool(task: Any, policy: Any = None) -> None:
    """A task the policy did not route to a tenant may not sit in a tenant's GPU pool: any DAG
    author may name any pool, and a task holding ``gpu-vision``'s slots would starve vision's GPU
    tasks. It goes to ``default_pool`` with one slot, and the DAG processor log says why. This
    includes a tenant's own GPU task whose tenant is known only at run time (docs/pools.md)."""
    from .pools import DEFAULT_POOL, POOL_PREFIX, policy_pools

    if not str(task.pool or "").startswith(POOL_PREFIX):
        return   # cheap test first: most tasks of a DAG file name no GPU pool
    policy = policy or _configured_policy()
    if policy is None or task.pool not in {p.name for p in policy_pools(policy)}:
        return
    from airflow.configuration import conf

    if not conf.getboolean(CONF_SECTION, ASSIGN_POOLS, fallback=True):
        return
    log.warning("[gpu-webhook] task %r in DAG %r names GPU pool %s, but its GPU tenant cannot be told when the "
                "DAG is parsed (not a GPU task, or a namespace or profile known only at run time): it waits in "
                "%s instead; only tasks the policy routes there may use a tenant's GPU pool",
                task.task_id, task.dag_id, task.pool, DEFAULT_POOL)
    task.pool, task.pool_slots = DEFAULT_POOL, 1


def _pool_problems(name: str, policy: Any) -> list[str]:
    """What is wrong with pool ``name`` in Airflow ([gpu_webhook] airflow_api_url; unset: not checked)."""
    from airflow.configuration import conf

    from .pools import policy_pools, pool_shortfalls

    url = conf.get(CONF_SECTION, API_URL, fallback=None)
    if not url:
        _say_unchecked()
        return []
    existing = _airflow_pools(url, conf.get(CONF_SECTION, API_TOKEN, fallback=None) or None,
                              int(time.monotonic() // POOLS_TTL))
    if isinstance(existing, str):
        return [f"the pools could not be read to check it: {existing}"]
    return pool_shortfalls([p for p in policy_pools(policy) if p.name == name], existing)


@lru_cache(maxsize=2)
def _airflow_pools(url: str, token: str | None, period: int) -> dict[str, int] | str:
    """The pools' slots, read once per ``POOLS_TTL`` seconds and process (a DAG file's tasks share one read)."""
    from .pools_api import PoolsApi, PoolsApiError

    try:
        return PoolsApi(url, token).slots()
    except PoolsApiError as err:
        return str(err)


@cache
def _say_unchecked() -> None:
    log.info("gpu-webhook: GPU pools are assigned but not checked against Airflow's: [%s] %s is not set",
             CONF_SECTION, API_URL)


# --- configuration ------------------------------------------------------------------------------

def _configured_policy() -> Any:
    """The policy named by ``[gpu_webhook] policy_file``, or None when the check is off."""
    from airflow.configuration import conf

    path = conf.get(CONF_SECTION, CONF_OPTION, fallback=None)
    if not path:
        _say_off()
        return None
    from airflow.exceptions import AirflowClusterPolicyError

    from ..core.policy import PolicyError

    try:
        return _load(path, _mtime(path))
    except PolicyError as err:
        raise AirflowClusterPolicyError(
            f"gpu-webhook: the GPU policy [{CONF_SECTION}] {CONF_OPTION} = {path} cannot be used, so GPU "
            f"tasks cannot be checked (a platform problem, not this DAG's):\n{err}") from None


@cache
def _say_off() -> None:
    log.info("gpu-webhook parse-time GPU checks are off: [%s] %s is not set", CONF_SECTION, CONF_OPTION)


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None  # load_policy reports the file as unreadable


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int | None) -> Any:
    """Parse once per (file, mtime): a DAG processor checks thousands of tasks against it."""
    from ..core.policy import load_policy

    return load_policy(path)


# --- which tasks make pods ----------------------------------------------------------------------

def _operator_class(task: Any) -> type[Any]:
    """The operator's class; a mapped task (``.partial().expand()``) names it ``operator_class``."""
    return task.operator_class if hasattr(task, "partial_kwargs") else type(task)


def _is_kpo(task: Any) -> bool:
    """True for KubernetesPodOperator and its subclasses (``@task.kubernetes``, GKE, EKS...).

    No DAG holds one unless the provider's module is imported, so it is looked up, not imported:
    DAGs without Kubernetes tasks never pay for the provider.
    """
    kpo = getattr(sys.modules.get(_KPO_MODULE), "KubernetesPodOperator", None)
    return kpo is not None and issubclass(_operator_class(task), kpo)


def _pod_override(task: Any) -> Any:
    """The task's ``executor_config["pod_override"]`` when it is a V1Pod (else the executor refuses it)."""
    config = getattr(task, "executor_config", None)
    override = config.get("pod_override") if isinstance(config, dict) else None
    if override is None:
        return None
    from kubernetes.client import V1Pod

    return override if isinstance(override, V1Pod) else None


def _task_pods(task: Any, policy: Any) -> Iterator[_TaskPod]:
    if _is_kpo(task):
        pod = _kpo_pod(task, policy)
        if pod is not None:
            yield pod
    override = _pod_override(task)
    if override is not None:
        yield _executor_pod(task, override)


# --- KubernetesPodOperator ----------------------------------------------------------------------

def _templated(value: Any) -> bool:
    return isinstance(value, str) and _TEMPLATE.search(value) is not None


def _known(value: Any) -> Any:
    """``value`` with every Jinja-templated string (and mapping entry keyed by one) left out."""
    if isinstance(value, dict):
        return {k: _known(v) for k, v in value.items() if not _templated(k) and not _templated(v)}
    if isinstance(value, list):
        return [_known(v) for v in value if not _templated(v)]
    return value


class _Fields:
    """The operator's arguments the pod is built from; templated or mapped ones are unknown."""

    def __init__(self, task: Any) -> None:
        if hasattr(task, "partial_kwargs"):
            expanded = getattr(getattr(task, "expand_input", None), "value", None)
            self.values = dict(task.partial_kwargs)
            # expand_kwargs() maps whole argument dicts: any field may come from it.
            self.expanded = frozenset(expanded) if isinstance(expanded, dict) else frozenset(_KPO_FIELDS)
        else:
            self.values = {name: getattr(task, name, None) for name in _KPO_FIELDS}
            self.expanded = frozenset()

    def unknown(self, name: str) -> bool:
        return name in self.expanded or _templated(self.values.get(name))

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None or self.unknown(name) else value


def _kpo_pod(task: Any, policy: Any) -> _TaskPod | None:
    """The pod ``build_pod_request_obj`` would build, from the fields the decision reads.

    Built with Airflow's own converters and merge so it is the same pod, without the parts that
    need a live connection (the hook's namespace, the xcom sidecar's image), the
    ``pod_mutation_hook`` or changing the operator. None when the GPU labels are templated.
    """
    fields = _Fields(task)
    labels = fields.get("labels", {})
    gpu_keys = (policy.spec.labels.profile, policy.spec.labels.count)
    if fields.unknown("labels") or not isinstance(labels, dict) or any(_templated(labels.get(k)) for k in gpu_keys):
        log.debug("task %s: GPU labels are templated or mapped; checked only when its pod is created", task.task_id)
        return None
    unknown = set()
    if fields.unknown("namespace") or not fields.get("namespace") or _known(labels) != labels:
        unknown.add(Reason.NO_TENANT)
    if fields.unknown("base_container_name"):
        unknown.add(Reason.NO_TARGET_CONTAINER)
    raw = _sanitize(_kpo_model(task, fields))
    raw["metadata"]["labels"] = {**raw["metadata"].get("labels", {}), **_kpo_origin_labels(task)}
    return _TaskPod("KubernetesPodOperator pod", _known(raw), fields.get("namespace", ""), frozenset(unknown))


def _kpo_model(task: Any, fields: _Fields) -> Any:
    """A V1Pod with the operator's decision-relevant fields, merged as Airflow merges them."""
    from airflow.providers.cncf.kubernetes.backcompat import backwards_compat_converters as convert
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import models as k8s

    env = fields.get("env_vars", [])
    # As build_pod_request_obj: configmaps extends env_from (an envFrom entry without a prefix).
    env_from = [*_list(fields.get("env_from")),
                *(convert.convert_configmap(name) for name in _list(fields.get("configmaps")))]
    base = k8s.V1Container(
        name=fields.get("base_container_name", _operator_class(task).BASE_CONTAINER_NAME),
        resources=fields.get("container_resources"),
        env=convert.convert_env_vars(env) if isinstance(env, dict | list) else [],
        env_from=env_from or None,
        security_context=fields.get("container_security_context"),
        volume_mounts=[convert.convert_volume_mount(v) for v in _list(fields.get("volume_mounts"))])
    pod = k8s.V1Pod(
        api_version="v1", kind="Pod",
        metadata=k8s.V1ObjectMeta(namespace=fields.get("namespace"), labels=fields.get("labels", {}),
                                  annotations=_dict(fields.get("annotations"))),
        spec=k8s.V1PodSpec(
            containers=[base], restart_policy="Never",
            node_selector=_dict(fields.get("node_selector")) or None,
            tolerations=[convert.convert_toleration(t) for t in _list(fields.get("tolerations"))] or None,
            init_containers=_list(fields.get("init_containers")) or None,
            volumes=[convert.convert_volume(v) for v in _list(fields.get("volumes"))] or None))
    template = fields.get("full_pod_spec")
    if isinstance(fields.get("pod_template_dict"), dict):
        template = PodGenerator.reconcile_pods(
            PodGenerator.deserialize_model_dict(fields.get("pod_template_dict")), template)
    if template is not None:
        pod = PodGenerator.reconcile_pods(template, pod)
    for secret in _list(fields.get("secrets")):
        pod = secret.attach_to_pod(pod)
    return pod


def _kpo_origin_labels(task: Any) -> dict[str, str]:
    """The identifying labels the operator adds at run time (they win over the author's)."""
    from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value

    return {"dag_id": make_safe_label_value(task.dag_id), "task_id": make_safe_label_value(task.task_id),
            "kubernetes_pod_operator": "True"}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sanitize(model: Any) -> dict[str, Any]:
    """The JSON the API server receives for a kubernetes-client model."""
    from kubernetes.client import ApiClient

    raw = ApiClient().sanitize_for_serialization(model)
    raw.setdefault("metadata", {})
    return raw


# --- KubernetesExecutor -------------------------------------------------------------------------

def _executor_pod(task: Any, override: Any) -> _TaskPod:
    """The worker pod Airflow's own ``PodGenerator.construct_pod`` builds for the task.

    The platform's worker template (``[kubernetes_executor] pod_template_file``) is left out:
    it is the platform's, not the DAG author's. The namespace is the executor's
    (``[kubernetes_executor] namespace``) unless the override sets one, as in the merge.
    """
    from airflow.configuration import conf
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import models as k8s

    pod = PodGenerator.construct_pod(
        dag_id=task.dag_id, task_id=task.task_id, pod_id="gpu-webhook-parse-check", try_number=1,
        kube_image="", date=None, args=[], pod_override_object=override, base_worker_pod=k8s.V1Pod(),
        namespace=conf.get("kubernetes_executor", "namespace", fallback="default"), scheduler_job_id="0")
    raw = _sanitize(pod)
    return _TaskPod("KubernetesExecutor pod_override", raw, raw["metadata"].get("namespace") or "default",
                   frozenset())
