"""The table of Airflow-built test pods, one entry per fixture file.

Each case is what a DAG author would write; scripts/generate_fixtures.py hands it to
Airflow's own code (KubernetesPodOperator.build_pod_request_obj or
PodGenerator.construct_pod) and records the pod that comes out. Values are written the
way DAG files write them (kubernetes.client model objects, label dicts), so the pods
carry whatever Airflow does to them: label sanitising, empty lists, sidecars.

Keys:
  id           file name under tests/fixtures/airflow/ (and the pod's case id)
  description  one line, copied into the fixture and INDEX.md
  kind         "kpo" (KubernetesPodOperator) or "executor" (KubernetesExecutor worker)
  namespace    namespace the pod is created in
  dag_id, task_id
  operator     (kpo) extra KubernetesPodOperator kwargs, over KPO_DEFAULTS
  expand       (kpo) mapped task: KubernetesPodOperator.partial(...).expand(**expand)
  map_index    mapped task instance to build (kpo with expand, or executor)
  pod_override (executor) the V1Pod of executor_config={"pod_override": ...}, or None

Profile names and limits come from manifests/policy.yaml (the reference policy).
"""

from kubernetes.client import models as k8s

PROFILE = "gpu.platform/profile"
COUNT = "gpu.platform/count"

# Fixtures under tests/fixtures/airflow/ that are written by hand, not by Airflow's code;
# the generator leaves them alone (never deletes them as stale).
HAND_MADE = {"kpo_not_airflow_like"}

# What every KPO case passes unless it says otherwise.
KPO_DEFAULTS = {
    "image": "nvcr.io/nvidia/pytorch:24.05-py3",
    "cmds": ["python", "-m", "job"],
}


def _resources(requests=None, limits=None):
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


CASES = [
    {
        "id": "kpo_mig_1g_xcom",
        "description": "KPO, MIG 1g.10gb profile, xcom sidecar, cpu/memory requests set by the author",
        "kind": "kpo",
        "namespace": "airflow",
        "dag_id": "team_vision__train_resnet",
        "task_id": "train",
        "operator": {
            "labels": {PROFILE: "a100-mig-1g.10gb"},
            "do_xcom_push": True,
            "container_resources": _resources(
                requests={"cpu": "2", "memory": "8Gi"}, limits={"memory": "8Gi"}
            ),
        },
    },
    {
        "id": "kpo_h100_count2",
        "description": "KPO, two H100 GPUs, no xcom sidecar",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "detect_objects",
        "task_id": "detect",
        "operator": {"labels": {PROFILE: "h100-80gb", COUNT: "2"}},
    },
    {
        "id": "kpo_cpu_plain",
        "description": "KPO without a GPU label: must pass untouched",
        "kind": "kpo",
        "namespace": "airflow",
        "dag_id": "team_vision__report",
        "task_id": "render_report",
        "operator": {"image": "python:3.12-slim"},
    },
    {
        "id": "kpo_existing_scheduling",
        "description": "KPO, a100-80gb, with the author's own init container, toleration, nodeSelector and "
                       "node affinity",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_segmentation",
        "task_id": "train",
        "operator": {
            "labels": {PROFILE: "a100-80gb"},
            "init_containers": [
                k8s.V1Container(
                    name="fetch-data",
                    image="amazon/aws-cli:2.17.0",
                    command=["aws", "s3", "sync", "s3://datasets/segmentation", "/data"],
                    volume_mounts=[k8s.V1VolumeMount(name="data", mount_path="/data")],
                )
            ],
            "volumes": [k8s.V1Volume(name="data", empty_dir=k8s.V1EmptyDirVolumeSource())],
            "volume_mounts": [k8s.V1VolumeMount(name="data", mount_path="/data")],
            "tolerations": [
                k8s.V1Toleration(key="dedicated", operator="Equal", value="ml", effect="NoSchedule")
            ],
            "node_selector": {"topology.kubernetes.io/zone": "eu-west-1a"},
            "affinity": k8s.V1Affinity(
                node_affinity=k8s.V1NodeAffinity(
                    preferred_during_scheduling_ignored_during_execution=[
                        k8s.V1PreferredSchedulingTerm(
                            weight=50,
                            preference=k8s.V1NodeSelectorTerm(
                                match_expressions=[
                                    k8s.V1NodeSelectorRequirement(
                                        key="example.com/local-nvme", operator="In", values=["true"]
                                    )
                                ]
                            ),
                        )
                    ]
                )
            ),
        },
    },
    {
        "id": "kpo_mapped",
        "description": "KPO mapped task (expand over arguments), instance map_index=2, MIG 2g.20gb",
        "kind": "kpo",
        "namespace": "airflow",
        "dag_id": "team_vision__sweep",
        "task_id": "train",
        "operator": {"labels": {PROFILE: "a100-mig-2g.20gb"}},
        "expand": {"arguments": [["--lr", "0.1"], ["--lr", "0.01"], ["--lr", "0.001"]]},
        "map_index": 2,
    },
    {
        "id": "kpo_long_dag_id",
        "description": "KPO whose 87-character dag_id Airflow cuts to 63 characters plus a hash in the label",
        "kind": "kpo",
        "namespace": "airflow",
        "dag_id": "team_vision__nightly_retraining_of_the_resnet50_backbone_on_imagenet21k_mixed_precision",
        "task_id": "train",
        "operator": {"labels": {PROFILE: "a100-mig-1g.10gb"}},
    },
    {
        "id": "kpo_unknown_profile",
        "description": "KPO asking for profile a100-40gb, which the policy does not define",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_legacy",
        "task_id": "train",
        "operator": {"labels": {PROFILE: "a100-40gb"}},
    },
    {
        "id": "kpo_count_zero",
        "description": "KPO, a100-80gb, count label \"0\"",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_counts",
        "task_id": "zero",
        "operator": {"labels": {PROFILE: "a100-80gb", COUNT: "0"}},
    },
    {
        "id": "kpo_count_not_int",
        "description": "KPO, a100-80gb, count label \"two\" (not an integer)",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_counts",
        "task_id": "not_int",
        "operator": {"labels": {PROFILE: "a100-80gb", COUNT: "two"}},
    },
    {
        "id": "kpo_count_over_max",
        "description": "KPO, MIG 3g.40gb, count 3 (profile maxCount is 2)",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_counts",
        "task_id": "over_max",
        "operator": {"labels": {PROFILE: "a100-mig-3g.40gb", COUNT: "3"}},
    },
    {
        "id": "kpo_env_visible_devices",
        "description": "KPO, a100-80gb, env NVIDIA_VISIBLE_DEVICES=all set by the author",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_env",
        "task_id": "visible_devices",
        "operator": {
            "labels": {PROFILE: "a100-80gb"},
            "env_vars": {"NVIDIA_VISIBLE_DEVICES": "all"},
        },
    },
    {
        "id": "kpo_env_ld_preload",
        "description": "KPO, a100-80gb, env LD_PRELOAD=/tmp/x.so",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_env",
        "task_id": "ld_preload",
        "operator": {"labels": {PROFILE: "a100-80gb"}, "env_vars": {"LD_PRELOAD": "/tmp/x.so"}},
    },
    {
        "id": "kpo_cpu_env_visible_devices",
        "description": "KPO without a GPU label but with NVIDIA_VISIBLE_DEVICES=all",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_env",
        "task_id": "cpu_visible_devices",
        "operator": {"image": "python:3.12-slim", "env_vars": {"NVIDIA_VISIBLE_DEVICES": "all"}},
    },
    {
        "id": "kpo_privileged",
        "description": "KPO, a100-80gb, base container privileged",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_security",
        "task_id": "privileged",
        "operator": {
            "labels": {PROFILE: "a100-80gb"},
            "container_security_context": k8s.V1SecurityContext(privileged=True),
        },
    },
    {
        "id": "kpo_hostpath_dev_nvidia",
        "description": "KPO, a100-80gb, hostPath volume /dev/nvidia0 mounted in base",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_security",
        "task_id": "hostpath_dev_nvidia",
        "operator": {
            "labels": {PROFILE: "a100-80gb"},
            "volumes": [
                k8s.V1Volume(
                    name="nvidia0",
                    host_path=k8s.V1HostPathVolumeSource(path="/dev/nvidia0", type="CharDevice"),
                )
            ],
            "volume_mounts": [k8s.V1VolumeMount(name="nvidia0", mount_path="/dev/nvidia0")],
        },
    },
    {
        "id": "kpo_unlabelled_gpu",
        "description": "KPO with nvidia.com/gpu: 1 in limits and no profile label",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_unlabelled",
        "task_id": "train",
        "operator": {"container_resources": _resources(limits={"nvidia.com/gpu": "1"})},
    },
    {
        "id": "kpo_manual_gpu_mismatch",
        "description": "KPO, MIG 1g.10gb profile but nvidia.com/gpu: 1 set by hand in limits",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_mismatch",
        "task_id": "train",
        "operator": {
            "labels": {PROFILE: "a100-mig-1g.10gb"},
            "container_resources": _resources(limits={"nvidia.com/gpu": "1"}),
        },
    },
    {
        "id": "kpo_no_tenant",
        "description": "KPO, a100-80gb, namespace analytics: fits no tenant",
        "kind": "kpo",
        "namespace": "analytics",
        "dag_id": "adhoc_query",
        "task_id": "query",
        "operator": {"labels": {PROFILE: "a100-80gb"}},
    },
    {
        "id": "kpo_podlabel_tenant",
        "description": "KPO, MIG 1g.10gb, tenant vision chosen by the pod label team=vision",
        "kind": "kpo",
        "namespace": "airflow",
        "dag_id": "misc_dag",
        "task_id": "embed",
        "operator": {"labels": {"team": "vision", PROFILE: "a100-mig-1g.10gb"}},
    },
    {
        "id": "kpo_nodeselector_conflict",
        "description": "KPO, a100-80gb, author's nodeSelector asks for an H100",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_conflict",
        "task_id": "train",
        "operator": {
            "labels": {PROFILE: "a100-80gb"},
            "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        },
    },
    {
        "id": "kpo_nightly_a100",
        "description": "KPO, a100-80gb, dag nightly_forecast (tenant forecasting)",
        "kind": "kpo",
        "namespace": "airflow",
        "dag_id": "nightly_forecast",
        "task_id": "fit",
        "operator": {"labels": {PROFILE: "a100-80gb"}},
    },
    {
        "id": "kpo_quota_breaker",
        "description": "KPO, a100-80gb, count 5: above vision's nvidia.com/gpu quota of 4, within maxCount 8",
        "kind": "kpo",
        "namespace": "ml-jobs",
        "dag_id": "train_big",
        "task_id": "train",
        "operator": {"labels": {PROFILE: "a100-80gb", COUNT: "5"}},
    },
    {
        "id": "executor_gpu_override",
        "description": "KubernetesExecutor worker, pod_override with MIG 1g.10gb label and cpu/memory requests on base",
        "kind": "executor",
        "namespace": "airflow",
        "dag_id": "team_vision__etl",
        "task_id": "embed",
        "pod_override": k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(labels={PROFILE: "a100-mig-1g.10gb"}),
            spec=k8s.V1PodSpec(
                containers=[
                    k8s.V1Container(
                        name="base", resources=_resources(requests={"cpu": "2", "memory": "8Gi"})
                    )
                ]
            ),
        ),
    },
    {
        "id": "executor_cpu",
        "description": "KubernetesExecutor worker without executor_config: must pass untouched",
        "kind": "executor",
        "namespace": "airflow",
        "dag_id": "team_vision__etl",
        "task_id": "load",
        "pod_override": None,
    },
    {
        "id": "executor_mapped_gpu",
        "description": "KubernetesExecutor worker of a mapped task (map_index 3), pod_override labels "
                       "h100-80gb count 1",
        "kind": "executor",
        "namespace": "airflow",
        "dag_id": "team_vision__etl",
        "task_id": "score",
        "map_index": 3,
        "pod_override": k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(labels={PROFILE: "h100-80gb", COUNT: "1"}),
        ),
    },
]

# A worker pod template as the official Helm chart renders it with default values
# (files/pod-template-file.kubernetes-helm-yaml, release "airflow"): the KubernetesExecutor
# starts every worker from this, then overlays its own pod, then the pod_override.
BASE_WORKER_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "placeholder-name",
        "labels": {"tier": "airflow", "component": "worker", "release": "airflow"},
    },
    "spec": {
        "containers": [
            {
                "name": "base",
                "image": "apache/airflow:3.3.2",
                "imagePullPolicy": "IfNotPresent",
                "envFrom": [],
                "env": [
                    {"name": "AIRFLOW__CORE__EXECUTOR", "value": "LocalExecutor"},
                    {
                        "name": "AIRFLOW__CORE__FERNET_KEY",
                        "valueFrom": {"secretKeyRef": {"name": "airflow-fernet-key", "key": "fernet-key"}},
                    },
                    {
                        "name": "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                        "valueFrom": {"secretKeyRef": {"name": "airflow-metadata", "key": "connection"}},
                    },
                ],
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
                "resources": {},
                "volumeMounts": [
                    {"mountPath": "/opt/airflow/logs", "name": "logs"},
                    {
                        "mountPath": "/opt/airflow/airflow.cfg",
                        "name": "config",
                        "subPath": "airflow.cfg",
                        "readOnly": True,
                    },
                ],
            }
        ],
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": 50000, "fsGroup": 0},
        "nodeSelector": {},
        "affinity": {},
        "terminationGracePeriodSeconds": 600,
        "tolerations": [],
        "topologySpreadConstraints": [],
        "serviceAccountName": "airflow-worker",
        "volumes": [
            {"emptyDir": {}, "name": "logs"},
            {"configMap": {"name": "airflow-config"}, "name": "config"},
        ],
    },
}
