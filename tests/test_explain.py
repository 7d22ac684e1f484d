"""``gpu-webhook explain``: what a labelled task gets, told from the webhook's own plan and mutation."""

from __future__ import annotations

import jsonpatch
import pytest
import yaml

from airflow_gpu_webhook.cli.explain import POLICY_ENV, ExplainError, explain, run_explain
from airflow_gpu_webhook.core.mutate import decide_mutation

from conftest import DRA_POLICY_FILE, POLICY_FILE, airflow_fixture

KNOWN = "a100-80gb, h100-80gb, a100-mig-1g.10gb, a100-mig-2g.20gb, a100-mig-3g.40gb"
INDENT = " " * 12
H100_TOLERATION = f"{INDENT}toleration key=nvidia.com/gpu operator=Exists effect=NoSchedule"


@pytest.mark.parametrize("args, kwargs, expected", [
    pytest.param(("h100-80gb", "2"), {"namespace": "ml-jobs"}, [
        "profile h100-80gb: 2 x nvidia.com/gpu (maxCount 8; one unit weighs 1 in gpuEquivalent)",
        "resources   container base: limits and requests nvidia.com/gpu: 2 (every other container: NVIDIA_VISIBLE_DEVICES=void)",
        "placement   nodeSelector nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",
        H100_TOLERATION,
        "validation  init container gpu-driver-validation runs first, on the same GPUs (nvidia.com/gpu: 2)",
        f"{INDENT}image ghcr.io/example/airflow-gpu-webhook:0.1.0",
        f"{INDENT}gpu-webhook validate-driver --min-driver-version 535.104.05 --min-cuda-version 12.2 "
        f"--resource nvidia.com/gpu --count 2",
        "labels      gpu.platform/managed=true gpu.platform/tenant=vision gpu.platform/profile=h100-80gb "
        "gpu.platform/count=2",
        "quota       tenant vision (namespace ml-jobs); this pod charges, of each limit:",
        f"{INDENT}  nvidia.com/gpu: 2 of 4",
        f"{INDENT}  nvidia.com/mig-1g.10gb: 0 of 14",
        f"{INDENT}  gpuEquivalent: 2 of 6",
    ], id="two H100s go on base with the H100 placement, the validator and the vision quota lines"),
    pytest.param(("a100-mig-1g.10gb", 3), {"namespace": "airflow", "dag_id": "team_vision__embed"}, [
        "profile a100-mig-1g.10gb: 3 x nvidia.com/mig-1g.10gb (maxCount 7; one unit weighs 0.125 in gpuEquivalent)",
        f"{INDENT}nodeSelector nvidia.com/mig.strategy=mixed",
        f"{INDENT}  nvidia.com/gpu: 0 of 4",
        f"{INDENT}  nvidia.com/mig-1g.10gb: 3 of 14",
        f"{INDENT}  gpuEquivalent: 0.375 of 6",
    ], id="three MIG slices charge their own line and weigh 0.375 in gpuEquivalent"),
    pytest.param(("a100-80gb",), {"namespace": "airflow", "dag_id": "nightly_forecast"}, [
        "profile a100-80gb: 1 x nvidia.com/gpu (maxCount 8; one unit weighs 1 in gpuEquivalent)",
        "quota       tenant forecasting (namespace airflow); this pod charges, of each limit:",
        f"{INDENT}  nvidia.com/gpu: 1 of 2",
        f"{INDENT}  gpuEquivalent: 1 of 3",
    ], id="the count defaults to one and a dag_id prefix picks the forecasting tenant"),
    pytest.param(("h100-80gb",), {"namespace": "airflow", "labels": {"team": "vision"}}, [
        "quota       tenant vision (namespace airflow); this pod charges, of each limit:",
    ], id="a pod label picks the tenant"),
    pytest.param(("a100-mig-2g.20gb",), {}, [
        "labels      gpu.platform/managed=true gpu.platform/tenant=<its tenant> gpu.platform/profile=a100-mig-2g.20gb "
        "gpu.platform/count=1",
        "quota       charges nvidia.com/mig-2g.20gb 1, gpuEquivalent 0.25 to its tenant; give --namespace (and "
        "--dag-id) to see which tenant and its limits",
    ], id="without a namespace the tenant is left open and the charge is still shown"),
    pytest.param(("h100-80gb", "5"), {"namespace": "ml-jobs"}, [
        f"{INDENT}  nvidia.com/gpu: 5 of 4",
        f"{INDENT}refused even when the tenant uses nothing: exceeded quota: tenant vision, nvidia.com/gpu, "
        f"requested: 5, used: 0, limited: 4",
    ], id="more GPUs than the whole quota is flagged in the webhook's quota words"),
])
def test_explain_tells_what_the_task_gets(policy, args, kwargs, expected):
    lines = explain(policy, *args, **kwargs).splitlines()
    missing = [line for line in expected if line not in lines]
    assert not missing, "\n".join(lines)


@pytest.mark.parametrize("profile, count, namespace, message", [
    pytest.param("h100-8gb", "1", None,
                 f"gpu.platform/profile 'h100-8gb' is not a known GPU profile; known profiles: {KNOWN}",
                 id="an unknown profile is refused with the known ones listed"),
    pytest.param("h100-80gb", "0", None,
                 "gpu.platform/count '0' must be a positive whole number (1 to 8 for profile h100-80gb)",
                 id="a count of zero is refused with the profile's range"),
    pytest.param("a100-mig-3g.40gb", "two", None,
                 "gpu.platform/count 'two' must be a positive whole number (1 to 2 for profile a100-mig-3g.40gb)",
                 id="a count that is not a number is refused"),
    pytest.param("a100-mig-3g.40gb", "3", None,
                 "gpu.platform/count 3 exceeds maxCount 2 of profile a100-mig-3g.40gb; ask for 1 to 2",
                 id="a count over the profile's maxCount is refused"),
    pytest.param("h100-80gb", "1", "scratch",
                 "no GPU tenant matches namespace 'scratch', dag_id ''; tenants: vision (namespace ml-jobs | "
                 "namespace airflow + labels team=vision | namespace airflow + dag_id team_vision__*), "
                 "forecasting (namespace airflow + dag_id nightly_*)",
                 id="a namespace of no tenant is refused with the tenants listed"),
])
def test_explain_refuses_what_the_webhook_refuses_in_its_words(policy, profile, count, namespace, message):
    with pytest.raises(ExplainError) as refused:
        explain(policy, profile, count, namespace=namespace)
    assert str(refused.value) == message


def test_explain_matches_the_webhooks_patch_of_a_pod_airflow_built(policy):
    case = airflow_fixture("kpo_h100_count2")
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], case["namespace"], policy).patch))
    lines = explain(policy, "h100-80gb", "2", namespace=case["namespace"]).splitlines()
    base = next(c for c in pod["spec"]["containers"] if c["name"] == "base")
    validator = pod["spec"]["initContainers"][0]
    assert base["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert "resources   container base: limits and requests nvidia.com/gpu: 2 (every other container: NVIDIA_VISIBLE_DEVICES=void)" in lines
    assert f"{INDENT}{' '.join(validator['command'] + validator['args'])}" in lines
    assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert H100_TOLERATION in lines


@pytest.mark.parametrize("argv, env_policy, code, out, err", [
    pytest.param(["h100-80gb", "--count", "2", "--namespace", "ml-jobs", "--policy", str(POLICY_FILE)], None, 0,
                 "profile h100-80gb: 2 x nvidia.com/gpu", "", id="a good label is explained with exit 0"),
    pytest.param(["a100-80gb", "--namespace", "airflow", "--dag-id", "nightly_x"], str(POLICY_FILE), 0,
                 "tenant forecasting (namespace airflow)", "",
                 id="the policy defaults to the one Airflow's parse-time check reads"),
    pytest.param(["h100-80gb", "--namespace", "airflow", "--label", "team=vision", "--policy", str(POLICY_FILE)],
                 None, 0, "tenant vision (namespace airflow)", "", id="labels are given as KEY=VALUE"),
    pytest.param(["h100-8gb", "--policy", str(POLICY_FILE)], None, 1, "",
                 "gpu-webhook explain: the webhook would refuse this task: gpu.platform/profile 'h100-8gb' is not "
                 "a known GPU profile", id="an unknown profile exits 1 with the webhook's words"),
    pytest.param(["h100-80gb", "--count", "-1", "--policy", str(POLICY_FILE)], None, 1, "",
                 "gpu.platform/count '-1' must be a positive whole number", id="a negative count exits 1"),
    pytest.param(["h100-80gb"], None, 2, "", f"no policy file: pass --policy FILE or set {POLICY_ENV}",
                 id="no policy file exits 2 and says how to name one"),
    pytest.param(["h100-80gb", "--policy", "/nonexistent/policy.yaml"], None, 2, "",
                 "invalid policy:\n/nonexistent/policy.yaml: cannot read the policy file",
                 id="an unreadable policy exits 2 naming the file"),
    pytest.param(["h100-80gb", "--label", "team", "--policy", str(POLICY_FILE)], None, 2, "",
                 "--label takes KEY=VALUE", id="a label without a value exits 2"),
])
def test_run_explain_exit_codes_and_output(monkeypatch, capsys, argv, env_policy, code, out, err):
    monkeypatch.delenv(POLICY_ENV, raising=False)
    if env_policy:
        monkeypatch.setenv(POLICY_ENV, env_policy)
    assert run_explain(argv) == code
    captured = capsys.readouterr()
    assert out in captured.out and err in captured.err
    assert bool(captured.out) == (code == 0)


def _requester_policy(tmp_path):
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"]["platform"] = {"match": [{"serviceAccount": "shared/worker"}, {"group": "gpu-admins"}],
                                           "quota": {"gpuEquivalent": 2}}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("who, code, words", [
    pytest.param([], 0, "charges nvidia.com/gpu 1, gpuEquivalent 1 to its tenant",
                 id="without the requester a tenant matched on it is left open"),
    pytest.param(["--service-account", "shared/worker"], 0, "tenant platform (namespace shared)",
                 id="a ServiceAccount picks the tenant matched on it"),
    pytest.param(["--user", "alice", "--group", "gpu-admins"], 0, "tenant platform (namespace shared)",
                 id="a group picks the tenant matched on it"),
    pytest.param(["--service-account", "shared/other"], 1, "no GPU tenant matches namespace 'shared', dag_id '', "
                                                           "created by 'system:serviceaccount:shared:other'",
                 id="another ServiceAccount fits no tenant and is named"),
])
def test_explain_reads_who_creates_the_pod(tmp_path, capsys, who, code, words):
    assert run_explain(["h100-80gb", "--namespace", "shared", "--policy", _requester_policy(tmp_path), *who]) == code
    captured = capsys.readouterr()
    assert words in (captured.out if code == 0 else captured.err)


def test_a_dag_id_with_odd_characters_gets_the_label_airflow_gives_it(policy):
    assert "tenant forecasting" in explain(policy, "a100-80gb", namespace="airflow", dag_id="nightly_/ü" + "x" * 70)


# --- DRA profiles (docs/examples/policy-dra.yaml) ---

A100_SELECTOR = 'device.attributes["gpu.nvidia.com"].productName == "NVIDIA A100-SXM4-80GB"'


@pytest.mark.parametrize("args, kwargs, expected, absent", [
    pytest.param(("a100-dra", "2"), {"namespace": "ml-jobs"}, [
        "profile a100-dra: 2 DRA claims of one device each, counted as nvidia.com/gpu (maxCount 8; one unit weighs 1 "
        "in gpuEquivalent)",
        "resources   2 ResourceClaims (gpu-platform-0, gpu-platform-1) from ResourceClaimTemplate gpu-platform-a100-dra "
        "of namespace ml-jobs (kept by serve --track-usage, or made by the chart or gpu-webhook dra templates): each one device of DeviceClass "
        "gpu.nvidia.com",
        f"{INDENT}selector {A100_SELECTOR}",
        f"{INDENT}container base: resources.claims gpu-platform-0, gpu-platform-1 (every other container: "
        f"NVIDIA_VISIBLE_DEVICES=void)",
        "validation  init container gpu-driver-validation runs first, on the same GPUs (claims gpu-platform-0, "
        "gpu-platform-1)",
        f"{INDENT}  nvidia.com/gpu: 2 of 4",
        f"{INDENT}  gpuEquivalent: 2 of 6",
    ], ["2 x nvidia.com/gpu", "limits and requests"],
        id="two claims from the profile's template, its class and selector, on base and the validator, charged as GPUs"),
    pytest.param(("a100-dra-mig-1g.10gb",), {}, [
        "profile a100-dra-mig-1g.10gb: 1 DRA claim of one device, counted as nvidia.com/mig-1g.10gb (maxCount 7; one "
        "unit weighs 0.125 in gpuEquivalent)",
        "resources   1 ResourceClaim (gpu-platform-0) from ResourceClaimTemplate gpu-platform-a100-dra-mig-1g.10gb of the "
        "pod's namespace (kept by serve --track-usage, or made by the chart or gpu-webhook dra templates): one device of DeviceClass mig.nvidia.com",
        f'{INDENT}selector device.attributes["gpu.nvidia.com"].profile == "1g.10gb"',
        "quota       charges nvidia.com/mig-1g.10gb 1, gpuEquivalent 0.125 to its tenant; give --namespace (and "
        "--dag-id) to see which tenant and its limits",
    ], ["1 x "], id="one MIG claim without a namespace names the pod's namespace for the template"),
    pytest.param(("a100-mig-1g.10gb-er", "2"), {"namespace": "ml-jobs"}, [
        "profile a100-mig-1g.10gb-er: 2 x nvidia.com/mig-1g.10gb (maxCount 7; one unit weighs 0.125 in gpuEquivalent)",
        "resources   container base: limits and requests nvidia.com/mig-1g.10gb: 2 (every other container: "
        "NVIDIA_VISIBLE_DEVICES=void)",
        f"{INDENT}served by DRA, not a device plugin: the scheduler allocates nvidia.com/mig-1g.10gb from DeviceClass "
        f"mig-1g-10gb.gpu.nvidia.com (its extendedResourceName), whose selectors choose the devices",
        "validation  init container gpu-driver-validation runs first, on the same GPUs (nvidia.com/mig-1g.10gb: 2)",
    ], ["ResourceClaim"], id="the extendedResource form asks for the resource, served by DRA through its DeviceClass"),
    pytest.param(("a100-80gb",), {"namespace": "ml-jobs"}, [
        "profile a100-80gb: 1 x nvidia.com/gpu (maxCount 8; one unit weighs 1 in gpuEquivalent)",
    ], ["DRA", "ResourceClaim"], id="a device-plugin profile of the same policy says nothing of DRA"),
])
def test_explain_tells_what_a_dra_task_gets(dra_policy, args, kwargs, expected, absent):
    text = explain(dra_policy, *args, **kwargs)
    lines = text.splitlines()
    missing = [line for line in expected if line not in lines]
    assert not missing, text
    assert not [word for word in absent if word in text], text


def test_explain_of_a_claim_profile_matches_the_webhooks_patch(dra_policy):
    pod = airflow_fixture("kpo_h100_count2")["pod"]
    pod["metadata"]["labels"]["gpu.platform/profile"] = "a100-dra"
    patched = jsonpatch.apply_patch(pod, list(decide_mutation(pod, "ml-jobs", dra_policy).patch))
    claims = [c["name"] for c in patched["spec"]["resourceClaims"]]
    templates = {c["resourceClaimTemplateName"] for c in patched["spec"]["resourceClaims"]}
    lines = explain(dra_policy, "a100-dra", "2", namespace="ml-jobs").splitlines()
    assert claims == ["gpu-platform-0", "gpu-platform-1"] and templates == {"gpu-platform-a100-dra"}
    assert any(f"({', '.join(claims)}) from ResourceClaimTemplate gpu-platform-a100-dra" in line for line in lines)
    base = next(c for c in patched["spec"]["containers"] if c["name"] == "base")
    assert f"{INDENT}container base: resources.claims {', '.join(c['name'] for c in base['resources']['claims'])} " \
           f"(every other container: NVIDIA_VISIBLE_DEVICES=void)" in lines


def test_run_explain_of_a_dra_profile_exits_0(capsys):
    assert run_explain(["a100-dra", "--count", "3", "--namespace", "ml-jobs", "--policy", str(DRA_POLICY_FILE)]) == 0
    assert "3 DRA claims of one device each" in capsys.readouterr().out
