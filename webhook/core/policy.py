"""The platform policy: a typed, validated model of the policy file, loaded once.

The file's contract is ``manifests/policy.yaml`` (a copy of the reference policy): every
field there is modelled here, unknown fields are refused (a typo in a policy file must fail
at load, not silently do nothing), and new fields may only be added as optional ones, so a
file that was valid stays valid.

A policy error names the file, the field path and the reason::

    >>> load_policy("policy.yaml")          # doctest: +SKIP
    PolicyError: policy.yaml: spec.profiles.a100-80gb.maxCount: Input should be greater than 0
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from decimal import Decimal
from functools import cached_property, wraps
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .names import VERSION, is_gpu_resource

__all__ = [
    "API_VERSION",
    "CLAIM_TEMPLATE_PREFIX",
    "GPU_EQUIVALENT",
    "DraBackend",
    "Policy",
    "PolicyError",
    "Profile",
    "Tenant",
    "TenantMatch",
    "claim_template_name",
    "ledger_name",
    "load_policy",
    "parse_policy",
    "per_policy",
    "policy_schema",
]

API_VERSION = "gpu.platform/v1alpha1"
#: The quota line that weighs every GPU resource together, in whole-GPU units.
GPU_EQUIVALENT = "gpuEquivalent"

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_VERSION = f"^{VERSION.pattern}$"   # the validator parses the same syntax (core/names.py)

PositiveQuantity = Annotated[Decimal, Field(gt=0)]


class _Strict(BaseModel):
    """Base of every policy model: immutable, and unknown fields are errors."""

    # defer_build: each model's validator is built when first used (the first policy loaded),
    # not at import; importing the core is then cheap for what never loads a policy.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class LabelNames(_Strict):
    """The label keys DAG authors put on their pods."""

    profile: str = "gpu.platform/profile"
    count: str = "gpu.platform/count"

    @field_validator("profile", "count")
    @classmethod
    def _label_key(cls, value: str) -> str:
        if not _LABEL_KEY.match(value):
            raise ValueError(f"{value!r} is not a valid Kubernetes label key")
        return value


class DriverValidation(_Strict):
    """The init container that checks the driver before the task starts."""

    image: str = Field(min_length=1)
    minDriverVersion: str = Field(pattern=_VERSION)
    minCudaVersion: str = Field(pattern=_VERSION)


class Toleration(_Strict):
    """A Kubernetes toleration, as written in a pod spec."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        return self

    def as_pod_field(self) -> dict[str, Any]:
        """The toleration as it appears in ``spec.tolerations`` (unset fields left out)."""
        return self.model_dump(exclude_none=True)


class DraBackend(_Strict):
    """Get the profile's GPUs through Dynamic Resource Allocation instead of the device plugin
    (docs/dra.md). Two forms:

    - ``claim``: the pod gets one ResourceClaim per unit, each from the namespace's
      ResourceClaimTemplate for this profile (``gpu-platform-<profile>``), which asks the
      DeviceClass ``deviceClassName`` for one device matching ``selector``;
    - ``extendedResource`` (KEP-5004): the pod asks for ``resource`` as an extended resource, as
      under the device plugin, and the scheduler serves it from the DeviceClass whose
      ``extendedResourceName`` is ``resource``; that class's own selectors choose the devices.
    """

    deviceClassName: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253)
    #: A CEL device selector, such as ``device.attributes["gpu.nvidia.com"].profile == "1g.10gb"``.
    selector: str | None = Field(default=None, min_length=1)
    form: Literal["claim", "extendedResource"] = "claim"

    @model_validator(mode="after")
    def _selector_only_for_claims(self) -> DraBackend:
        if self.form == "extendedResource" and self.selector is not None:
            raise ValueError("selector: in the extendedResource form the DeviceClass's own selectors choose the "
                             "devices (the pod names only the extended resource); put it in the DeviceClass")
        return self


class Profile(_Strict):
    """A GPU profile: which resource a task gets, how much, and where it may run.

    ``resource`` is what one unit is: what the pod asks for under the device plugin (and DRA's
    ``extendedResource`` form), and the quota line a DRA ``claim`` counts under, so a tenant's
    MIG slices are counted together whichever way they are obtained.
    """

    resource: str
    maxCount: int = Field(gt=0)
    gpuEquivalent: PositiveQuantity = Decimal(1)
    nodeSelector: dict[str, str] = Field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    #: The pool autoscales from zero: no node yet is no reason to refuse (a warning instead).
    scaleFromZero: bool = False
    #: Obtain the GPUs through Dynamic Resource Allocation (None: the device plugin).
    dra: DraBackend | None = None

    @property
    def claims(self) -> bool:
        """True when the pod gets its GPUs as ResourceClaims (DRA's ``claim`` form)."""
        return self.dra is not None and self.dra.form == "claim"

    @field_validator("resource")
    @classmethod
    def _gpu_resource(cls, value: str) -> str:
        if not is_gpu_resource(value):
            raise ValueError(
                f"{value!r} is not an NVIDIA GPU resource "
                "(nvidia.com/gpu or a MIG name such as nvidia.com/mig-1g.10gb)")
        return value

    @field_validator("nodeSelector")
    @classmethod
    def _selector_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"{key!r} is not a valid node label key")
        return value

    @cached_property
    def pod_tolerations(self) -> tuple[dict[str, Any], ...]:
        """The tolerations as pod-spec dicts, computed once."""
        return tuple(t.as_pod_field() for t in self.tolerations)


class TenantMatch(_Strict):
    """One way a pod can belong to a tenant: every key given must fit.

    ``namespace`` and the requester keys (``serviceAccount``, ``username``, ``group``: who asked
    the API server to create the pod, from the review's ``userInfo``) are facts Kubernetes
    authenticates; ``podLabels`` and ``dagIdPrefix`` are as trustworthy as the DAG code that
    sets them (docs/security.md).
    """

    namespace: str | None = None
    podLabels: dict[str, str] | None = None
    dagIdPrefix: str | None = None
    #: ``<namespace>/<name>`` of the ServiceAccount that creates the pod (an Airflow deployment's worker
    #: or scheduler account): the requester's username is then ``system:serviceaccount:<namespace>:<name>``.
    serviceAccount: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    #: The requester's exact username, as the API server authenticated it.
    username: str | None = Field(default=None, min_length=1)
    #: A group the requester belongs to.
    group: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _not_empty(self) -> TenantMatch:
        if self.namespace is None and not self.podLabels and not self.dagIdPrefix and not self.reads_requester:
            raise ValueError("a match entry needs at least one of namespace, podLabels, dagIdPrefix, serviceAccount, "
                             "username, group")
        return self

    @property
    def reads_requester(self) -> bool:
        """True when the match needs to know who creates the pod (unknown at DAG parse time)."""
        return self.serviceAccount is not None or self.username is not None or self.group is not None

    def describe(self) -> str:
        """A short human form, used in the denial that lists the tenants."""
        parts = []
        if self.namespace is not None:
            parts.append(f"namespace {self.namespace}")
        if self.podLabels:
            parts.append("labels " + ",".join(f"{k}={v}" for k, v in sorted(self.podLabels.items())))
        if self.dagIdPrefix:
            parts.append(f"dag_id {self.dagIdPrefix}*")
        if self.serviceAccount is not None:
            parts.append(f"created by ServiceAccount {self.serviceAccount}")
        if self.username is not None:
            parts.append(f"created by user {self.username}")
        if self.group is not None:
            parts.append(f"created by group {self.group}")
        return " + ".join(parts)


class Tenant(_Strict):
    """A team that owns GPU quota."""

    match: tuple[TenantMatch, ...] = Field(min_length=1)
    quota: dict[str, PositiveQuantity] = Field(default_factory=dict)
    #: Airflow pools a GPU task of this tenant may keep when its DAG names one; every other GPU
    #: task is routed to the tenant's own pool ``gpu-<tenant>`` (airflow/pools.py).
    airflowPools: tuple[str, ...] = ()

    @field_validator("quota")
    @classmethod
    def _quota_lines(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        for line in value:
            if line != GPU_EQUIVALENT and not is_gpu_resource(line):
                raise ValueError(f"quota line {line!r} is neither {GPU_EQUIVALENT} nor an NVIDIA GPU resource")
        return value


_LEDGER_UNSAFE = re.compile(r"[^a-z0-9-]")


#: The ResourceClaimTemplate of a DRA ``claim`` profile is named this plus the profile's name.
CLAIM_TEMPLATE_PREFIX = "gpu-platform-"


def claim_template_name(profile: str) -> str:
    """The name of the ResourceClaimTemplate that a DRA ``claim`` profile's pods claim from."""
    return CLAIM_TEMPLATE_PREFIX + profile


def ledger_name(tenant: str) -> str:
    """The ConfigMap holding ``tenant``'s quota reservations (webhook/cluster/ledger.py); the
    policy refuses two tenants with the same one."""
    return f"gpu-webhook-ledger-{_LEDGER_UNSAFE.sub('-', tenant.lower())}"[:253]


class PolicySpec(_Strict):
    """Everything the webhook decides from. Field order follows the reference file."""

    labels: LabelNames = LabelNames.model_construct()  # the defaults, unvalidated: no build at import
    airflowPodsOnly: bool = True
    unlabelledGpuPods: Literal["deny", "allow"] = "deny"
    #: ``warn`` turns every denial into an AdmissionReview warning (a safe roll-out mode).
    enforcement: Literal["enforce", "warn"] = "enforce"
    driverValidation: DriverValidation
    targetContainer: str = "base"
    profiles: dict[str, Profile] = Field(min_length=1)
    #: Order matters: a pod belongs to the first tenant whose match fits.
    tenants: dict[str, Tenant] = Field(default_factory=dict)
    #: RuntimeClasses whose handler runs the NVIDIA container toolkit: a pod naming one can
    #: reach a GPU node's devices without asking the device plugin (docs/security.md).
    gpuRuntimeClasses: tuple[str, ...] = ("nvidia",)
    #: A pod that holds no GPU but can reach a GPU node (a profile's toleration, a GPU
    #: runtimeClassName, spec.nodeName): ``deny`` it, or ``void`` every container (mutation
    #: gives NVIDIA_VISIBLE_DEVICES=void, validation checks it).
    gpuReachingPods: Literal["deny", "void"] = "deny"
    #: hostPath prefixes GPU pods and GPU-reaching pods may mount; everything else is denied.
    hostPathAllowlist: tuple[str, ...] = ()
    #: Dynamic Resource Allocation claims (spec.resourceClaims): ``deny`` until DRA-backed
    #: profiles exist (issue 19), since a claimed GPU would bypass profiles and quota.
    resourceClaims: Literal["deny", "allow"] = "deny"
    #: ``envFrom`` on a GPU pod's containers: ``prefixed`` (default) lets through only entries
    #: whose ``prefix`` cannot begin a toolkit variable or LD_PRELOAD, since the keys of a
    #: ConfigMap or Secret are not in the pod and the kubelet puts them after the device
    #: plugin's NVIDIA_VISIBLE_DEVICES; ``allow`` where the toolkit ignores env device requests
    #: from unprivileged containers (docs/security.md).
    gpuPodEnvFrom: Literal["prefixed", "allow"] = "prefixed"

    @field_validator("tenants")
    @classmethod
    def _one_ledger_each(cls, value: dict[str, Tenant]) -> dict[str, Tenant]:
        owners: dict[str, str] = {}
        for name in value:
            other = owners.setdefault(ledger_name(name), name)
            if other != name:
                raise ValueError(f"tenants {other!r} and {name!r} would share one quota ledger ({ledger_name(name)}: "
                                 f"names are lower-cased and every character other than a-z, 0-9 and - becomes -), "
                                 f"so each one's reservations would count against the other; rename one")
        return value

    @field_validator("profiles")
    @classmethod
    def _template_names(cls, value: dict[str, Profile]) -> dict[str, Profile]:
        for name, profile in value.items():
            template = claim_template_name(name)
            if profile.claims and (len(template) > 253 or not re.match(_DNS_SUBDOMAIN, template)):
                raise ValueError(f"profile {name!r} uses DRA claims, so its name must make a valid object name "
                                 f"({template!r}): lower-case letters, digits, '-' and '.'")
        return value

    @field_validator("hostPathAllowlist")
    @classmethod
    def _absolute_paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            if not path.startswith("/") or path != posixpath.normpath(path) or path == "/":
                raise ValueError(f"{path!r} must be a normalised absolute path other than /")
        return value


class Metadata(_Strict):
    name: str = Field(min_length=1)


class Policy(_Strict):
    """The whole policy file."""

    apiVersion: Literal["gpu.platform/v1alpha1"]
    kind: Literal["GPUPolicy"]
    metadata: Metadata
    spec: PolicySpec

    @cached_property
    def resource_weights(self) -> dict[str, Decimal]:
        """Default quota weight per GPU resource: the first profile (in file order) that uses it.

        A pod's own profile gives its weight; this fallback weighs GPU resources on pods whose
        profile is gone (the policy changed while they ran).
        """
        weights: dict[str, Decimal] = {}
        for profile in self.spec.profiles.values():
            weights.setdefault(profile.resource, profile.gpuEquivalent)
        return weights

    @cached_property
    def reads_requester(self) -> bool:
        """True when some tenant is matched on who creates the pod (unknown at DAG parse time)."""
        return any(m.reads_requester for t in self.spec.tenants.values() for m in t.match)

    @cached_property
    def gpu_taints(self) -> tuple[dict[str, Any], ...]:
        """The profiles' tolerations, each standing for the taint of a GPU pool, once each."""
        seen: dict[tuple[Any, ...], dict[str, Any]] = {}
        for profile in self.spec.profiles.values():
            for toleration in profile.pod_tolerations:
                seen.setdefault(tuple(sorted(toleration.items())), toleration)
        return tuple(seen.values())

    def weight(self, resource: str, profile: Profile | None = None) -> Decimal:
        """How many whole GPUs one unit of ``resource`` counts for in the gpuEquivalent line."""
        if profile is not None and profile.resource == resource:
            return profile.gpuEquivalent
        return self.resource_weights.get(resource, Decimal(1))


_T = TypeVar("_T")


def per_policy(compute: Callable[[Policy], _T]) -> Callable[[Policy], _T]:
    """``compute(policy)`` computed once per policy object, not once per call: for views of the
    policy that other modules derive on every event or request (a reload brings a new object,
    and with it a new value). One slot, swapped whole, so threads never see half of it::

        @per_policy
        def fixed_label_keys(policy: Policy) -> frozenset[str]: ...
    """
    slot: tuple[Policy, _T] | None = None

    @wraps(compute)
    def cached(policy: Policy) -> _T:
        nonlocal slot
        held = slot
        if held is None or held[0] is not policy:
            held = slot = (policy, compute(policy))
        return held[1]

    return cached


class PolicyError(ValueError):
    """An invalid policy file: the message names the file, the field path and the reason."""


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_policy(data: Any, source: str = "<policy>") -> Policy:
    """Validate an already-parsed policy document; raise PolicyError naming every bad field."""
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        lines = [f"{source}: {_field_path(e['loc'])}: {e['msg']}" for e in err.errors()]
        raise PolicyError("\n".join(lines)) from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (YAML or JSON)."""
    import yaml  # here, not at the top: only reading a file needs it, not every importer of the core

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(f"{path}: cannot read the policy file: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: (top level): expected a mapping with apiVersion, kind, metadata, spec")
    return parse_policy(data, str(path))


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of the policy file, for editors and CI linting."""
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "GPUPolicy"
    return schema
