"""Read-only views of a raw pod dict, exactly as the API server sent it.

The webhook never round-trips a pod through typed models (``V1Pod`` drops fields it does not
know, and a patch computed from it would then remove them). These helpers read the raw dict
and tolerate what Airflow and other clients really send: missing keys, ``null``, empty lists.
The pod is decoded JSON, so every mapping is a ``dict``: the checks say ``isinstance(x, dict)``,
several times cheaper on the hot path than the ``Mapping`` ABC.
"""

import hashlib
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from .names import GPU_RESOURCE_PREFIX

__all__ = [
    "AIRFLOW_ORIGIN_LABELS",
    "CONTAINER_FIELDS",
    "Container",
    "GpuContainer",
    "airflow_dag_id",
    "all_containers",
    "annotations",
    "as_dict",
    "as_list",
    "container_gpu_resources",
    "gpu_containers",
    "gpu_entries",
    "gpu_quantity",
    "is_airflow_pod",
    "labels",
    "safe_label_value",
]

#: Labels Airflow puts on the pods it builds: KubernetesPodOperator and KubernetesExecutor.
AIRFLOW_ORIGIN_LABELS = (("kubernetes_pod_operator", "True"), ("kubernetes_executor", "True"))

#: (field, index, container) where field is one of :data:`CONTAINER_FIELDS`.
Container = tuple[str, int, Mapping[str, Any]]
#: Where containers live in a pod spec, in the order they run; ephemeral containers come later,
#: with a ``pods/ephemeralcontainers`` update.
CONTAINER_FIELDS = ("initContainers", "containers", "ephemeralContainers")
#: The containers of a pod as created: what runs, what asks for resources.
POD_CONTAINER_FIELDS = CONTAINER_FIELDS[:2]
#: (field, container, its raw ``nvidia.com/*`` quantities) for containers that ask for a GPU.
GpuContainer = tuple[str, Mapping[str, Any], dict[str, Any]]


def as_dict(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a dict (a JSON object), else an empty one: a hostile pod may put anything anywhere."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` when it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def metadata(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_dict(pod.get("metadata"))


def spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_dict(pod.get("spec"))


def labels(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_dict(metadata(pod).get("labels"))


def annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return as_dict(metadata(pod).get("annotations"))


def is_airflow_pod(pod: Mapping[str, Any]) -> bool:
    """True for pods built by KubernetesPodOperator or the KubernetesExecutor."""
    pod_labels = labels(pod)
    return any(pod_labels.get(key) == value for key, value in AIRFLOW_ORIGIN_LABELS)


def airflow_dag_id(pod: Mapping[str, Any]) -> str:
    """The DAG id, preferring the full id Airflow keeps in annotations over the label.

    Label values are cut at 63 characters (and suffixed with a hash); the executor keeps the
    full id in the ``dag_id`` annotation, so a long id still matches its tenant's prefix.
    """
    value = annotations(pod).get("dag_id") or labels(pod).get("dag_id") or ""
    return value if isinstance(value, str) else ""


def all_containers(pod: Mapping[str, Any], fields: tuple[str, ...] = POD_CONTAINER_FIELDS) -> Iterator[Container]:
    """Every container of the pod in ``fields`` with where it lives: init containers first, as
    they run (pass :data:`CONTAINER_FIELDS` to include ephemeral containers)."""
    pod_spec = spec(pod)
    for field in fields:
        for index, container in enumerate(as_list(pod_spec.get(field))):
            if isinstance(container, dict):
                yield field, index, container


def gpu_quantity(value: Any) -> Decimal | None:
    """A GPU count from a resource quantity, None when it is not a canonical whole number.

    Devices are counted, not measured: only ``"2"`` (digits, no leading zero, at most
    :data:`MAX_QUANTITY_DIGITS`) or the JSON integer ``2`` count. ``"2.0"``, ``"2000m"``,
    ``"1e3"``, ``"-1"``, ``"NaN"``, ``"Infinity"`` and booleans are refused: the API server
    would accept some of them, but none is what a DAG author means by a number of GPUs, and
    a quantity parser meeting ``NaN`` raises. No parser here, so nothing can raise.
    """
    if isinstance(value, str):
        return _count_text(value) if len(value) <= MAX_QUANTITY_DIGITS else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value) if 0 <= value < 10 ** MAX_QUANTITY_DIGITS else None
    return None


@lru_cache(maxsize=1024)
def _count_text(text: str) -> Decimal | None:
    """Cached: the same few strings ("1", "2") recur on every GPU pod, about ten times per
    validation (benchmarks/core.py); only strings of at most nine characters get here, so the
    cache holds at most 1024 short strings. Decimals are immutable, so sharing is safe."""
    return Decimal(text) if _CANONICAL_COUNT.fullmatch(text) else None


#: Nine digits: far more devices than any node has, and a bound on what is ever parsed.
MAX_QUANTITY_DIGITS = 9
_CANONICAL_COUNT = re.compile(rf"0|[1-9][0-9]{{0,{MAX_QUANTITY_DIGITS - 1}}}", re.ASCII)


def gpu_entries(container: Mapping[str, Any],
                sections: tuple[str, ...] = ("limits", "requests")) -> Iterator[tuple[str, str, Any]]:
    """``(section, name, raw quantity)`` for each ``nvidia.com/*`` entry of the container's
    resources, section by section in the order given: the one loop over a container's GPU
    resources (what it asks for, which quantities are malformed, which GPUs a validator holds)."""
    resources = as_dict(container.get("resources"))
    for section in sections:
        for name, value in as_dict(resources.get(section)).items():
            if isinstance(name, str) and name.startswith(GPU_RESOURCE_PREFIX):
                yield section, name, value


def container_gpu_resources(container: Mapping[str, Any]) -> dict[str, Any]:
    """The raw ``nvidia.com/*`` quantities a container asks for (limits win over requests).

    Extended resources may not be overcommitted, so Kubernetes takes the limit as the request;
    a value only in requests is still a request the webhook must see.
    """
    return {name: value for _, name, value in gpu_entries(container, ("requests", "limits"))}


def gpu_containers(pod: Mapping[str, Any]) -> list[GpuContainer]:
    """The containers (init containers first) that ask for any ``nvidia.com/*`` resource."""
    found = []
    for field, _, container in all_containers(pod):
        resources = container_gpu_resources(container)
        if resources:
            found.append((field, container, resources))
    return found


_UNSAFE_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]")
_UNSAFE_LABEL_ENDS = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


@lru_cache(maxsize=1024)
def safe_label_value(value: str) -> str:
    """A valid label value for ``value``: invalid characters dropped, at most 63 characters.

    A value that had to change gets a short hash suffix, so two different inputs do not
    collapse into the same label (the same idea as Airflow's ``make_safe_label_value``).
    Cached: the inputs are the policy's tenant and profile names, a small set.
    """
    cleaned = _UNSAFE_LABEL_ENDS.sub("", _UNSAFE_LABEL_CHARS.sub("", value))
    if cleaned == value and len(value) <= 63:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return _UNSAFE_LABEL_ENDS.sub("", f"{cleaned[:54]}-{digest}")
