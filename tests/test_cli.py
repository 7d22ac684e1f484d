"""The gpu-webhook command line, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import jsonpatch
import pytest

from conftest import POLICY_FILE, admission_review, airflow_fixture


def gpu_webhook(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", *args], input=stdin, capture_output=True, timeout=60)


def review_input(case_id: str, tmp_path, **changes) -> str:
    case = airflow_fixture(case_id)
    path = tmp_path / f"{case_id}.json"
    path.write_text(json.dumps(admission_review(case["pod"], case["namespace"], **changes)))
    return str(path)


def test_review_prints_the_admission_response_with_the_patch(tmp_path):
    done = gpu_webhook("review", "--policy", str(POLICY_FILE), review_input("kpo_mig_1g_xcom", tmp_path))
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)["response"]
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"


def test_review_of_a_denied_pod_exits_zero_with_the_message_from_stdin(tmp_path):
    body = Path(review_input("kpo_unknown_profile", tmp_path)).read_bytes()
    done = gpu_webhook("review", "--policy", str(POLICY_FILE), stdin=body)
    assert done.returncode == 0
    status = json.loads(done.stdout)["response"]["status"]
    assert status["code"] == 403 and "is not a known GPU profile" in status["message"]


def test_review_reads_the_requester_from_the_review(tmp_path):
    """A tenant matched on who creates the pod: the review's userInfo picks it."""
    import yaml

    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"] = {"platform": {"match": [{"serviceAccount": "airflow/platform-worker"}]},
                               **data["spec"]["tenants"]}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data))
    user = {"username": "system:serviceaccount:airflow:platform-worker", "groups": ["system:serviceaccounts"]}
    done = gpu_webhook("review", "--policy", str(policy), review_input("kpo_mig_1g_xcom", tmp_path, user=user))
    patch = json.loads(base64.b64decode(json.loads(done.stdout)["response"]["patch"]))
    assert {"op": "add", "path": "/metadata/labels/gpu.platform~1tenant", "value": "platform"} in patch


def test_review_of_an_update_judges_the_relabel(tmp_path):
    old = airflow_fixture("kpo_h100_count2")["pod"]
    old["metadata"]["labels"].update({"gpu.platform/managed": "true", "gpu.platform/tenant": "vision"})
    new = json.loads(json.dumps(old))
    del new["metadata"]["labels"]["gpu.platform/managed"]
    path = tmp_path / "update.json"
    path.write_text(json.dumps(admission_review(new, "ml-jobs", operation="UPDATE", old=old)))
    status = json.loads(gpu_webhook("review", "--policy", str(POLICY_FILE), str(path)).stdout)["response"]["status"]
    assert "this update removes label gpu.platform/managed" in status["message"]


def _running(case_id: str, name: str, phase: str = "Running") -> dict:
    """An Airflow pod as the cluster holds it after our mutation."""
    case = airflow_fixture(case_id)
    done = gpu_webhook("review", "--policy", str(POLICY_FILE),
                       stdin=json.dumps(admission_review(case["pod"], case["namespace"])).encode())
    patch = json.loads(base64.b64decode(json.loads(done.stdout)["response"]["patch"]))
    pod = jsonpatch.apply_patch(case["pod"], patch)
    pod["metadata"].update(name=name, namespace=case["namespace"])
    pod["status"] = {"phase": phase}
    return pod


def test_review_counts_usage_from_a_cluster_pod_list(tmp_path):
    pods = tmp_path / "pods.json"
    pods.write_text(json.dumps({"apiVersion": "v1", "kind": "PodList", "items": [
        _running("kpo_h100_count2", "one"), _running("kpo_h100_count2", "two", "Pending"),
        _running("kpo_h100_count2", "done", "Succeeded")]}))
    done = gpu_webhook("review", "--policy", str(POLICY_FILE), "--cluster-pods", str(pods),
                       review_input("kpo_h100_count2", tmp_path))
    message = json.loads(done.stdout)["response"]["status"]["message"]
    assert message == "exceeded quota: tenant vision, nvidia.com/gpu, requested: 2, used: 4, limited: 4"


@pytest.mark.parametrize("args, stdin, words", [
    (["review", "--policy", str(POLICY_FILE)], b"{not json", "is not valid JSON"),
    (["review", "--policy", str(POLICY_FILE)], b'{"apiVersion": "v1"}', "expected apiVersion admission.k8s.io/v1"),
    (["review", "--policy", "/nonexistent.yaml"], b"{}", "cannot read the policy file"),
    (["review", "--policy", str(POLICY_FILE), "--cluster-pods", "/nonexistent.json"], None, "cannot read pod list"),
    (["policy", "check", "/etc/hostname"], None, "invalid policy"),
])
def test_bad_input_exits_2_with_one_clear_line(args, stdin, words, tmp_path):
    if "--cluster-pods" in args:
        args = args + [review_input("kpo_h100_count2", tmp_path)]
    done = gpu_webhook(*args, stdin=stdin)
    assert done.returncode == 2 and words in done.stderr.decode()
    assert b"Traceback" not in done.stderr


def test_policy_check_and_schema():
    check = gpu_webhook("policy", "check", str(POLICY_FILE))
    assert check.returncode == 0 and b"valid policy 'reference'" in check.stdout
    schema = json.loads(gpu_webhook("policy", "schema").stdout)
    assert schema["title"] == "GPUPolicy" and "spec" in schema["properties"]


def test_certs_generate_then_inject_writes_a_usable_manifest(tmp_path):
    made = gpu_webhook("certs", "generate", "--out", str(tmp_path / "c"), "--service", "gpu-webhook",
                       "--namespace", "gpu-webhook")
    assert made.returncode == 0, made.stderr
    again = gpu_webhook("certs", "generate", "--out", str(tmp_path / "c"), "--service", "s", "--namespace", "n")
    assert again.returncode == 2 and b"--force" in again.stderr
    manifest = tmp_path / "webhooks.yaml"
    manifest.write_text((POLICY_FILE.parent / "base" / "webhook-configurations.yaml").read_text())
    injected = gpu_webhook("certs", "inject", "--ca", str(tmp_path / "c" / "ca.crt"), "--url",
                           "https://127.0.0.1:8443", "--in-place", str(manifest))
    assert injected.returncode == 0, injected.stderr
    assert "url: https://127.0.0.1:8443/validate" in manifest.read_text()


def test_validate_driver_runs_the_real_validator_and_explains_a_missing_driver(tmp_path):
    log = tmp_path / "termination-log"
    done = gpu_webhook("validate-driver", "--min-driver-version", "535.104.05", "--min-cuda-version", "12.2",
                       "--resource", "nvidia.com/mig-1g.10gb", "--count", "1", "--termination-log", str(log))
    if done.returncode == 0:
        pytest.skip("this machine has a working NVIDIA GPU; tests/test_validator_gpu.py covers it")
    assert done.returncode == 3, done.stderr
    assert "nvml" in log.read_text() and "libnvidia-ml.so.1" in log.read_text()


def test_validate_driver_help_is_the_validators():
    done = gpu_webhook("validate-driver", "--help")
    assert done.returncode == 0 and b"--min-driver-version" in done.stdout


def test_version():
    assert gpu_webhook("--version").stdout.decode().startswith("gpu-webhook ")


def test_policy_conditions_prints_the_shipped_webhook_configurations():
    done = gpu_webhook("policy", "conditions", str(POLICY_FILE))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == (POLICY_FILE.parent / "base" / "webhook-configurations.yaml").read_text()


@pytest.mark.parametrize("args, warned", [
    pytest.param(["--track-usage"], True, id="quota tracked and no client certificate required: warned"),
    pytest.param(["--track-usage", "--client-ca", "ca.crt"], False, id="quota tracked behind --client-ca: quiet"),
    pytest.param([], False, id="no quota tracking (nothing to reserve): quiet"),
])
def test_serve_warns_when_anyone_who_reaches_its_port_could_reserve_quota(args, warned):
    from airflow_gpu_webhook.cli.main import _parser, exposure_warning

    parsed = _parser().parse_args(["serve", "--policy", "p", "--tls-cert", "c", "--tls-key", "k", *args])
    warning = exposure_warning(parsed)
    assert (warning is not None) == warned
    if warned:
        assert "--client-ca" in warning and "manifests/components/client-ca" in warning
