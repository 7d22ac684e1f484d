"""``gpu-webhook dra templates``: the ResourceClaimTemplates of the DRA claim profiles, per namespace."""

from __future__ import annotations

import pytest
import yaml

from airflow_gpu_webhook.cli.claim_templates import open_match_entries, run_dra, templates
from airflow_gpu_webhook.cli.explain import POLICY_ENV
from airflow_gpu_webhook.cli.main import main
from airflow_gpu_webhook.core.dra import claim_template, decide_template
from airflow_gpu_webhook.core.policy import parse_policy

from conftest import DRA_POLICY_FILE, POLICY_FILE

CLAIM_PROFILES = ["a100-dra", "a100-dra-mig-1g.10gb"]


def _printed(capsys, argv: list[str]) -> tuple[int, list[dict], str]:
    code = run_dra(argv)
    captured = capsys.readouterr()
    return code, [d for d in yaml.safe_load_all(captured.out) if d], captured.err


def _where(objs: list[dict]) -> list[tuple[str, str]]:
    return [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs]


def test_the_dra_policy_gets_each_claim_profiles_template_in_each_tenant_namespace(capsys, golden):
    code, objs, err = _printed(capsys, ["templates", "--policy", str(DRA_POLICY_FILE)])
    assert (code, err) == (0, "")
    assert _where(objs) == [(ns, f"gpu-platform-{p}") for ns in ("airflow", "ml-jobs") for p in CLAIM_PROFILES]
    golden("claim_templates/policy_dra", objs)


def test_each_printed_template_is_the_cores_and_passes_its_template_check(capsys, dra_policy):
    _, objs, _ = _printed(capsys, ["templates", "--policy", str(DRA_POLICY_FILE), "--namespace", "team-a"])
    assert objs == [claim_template(p, dra_policy.spec.profiles[p], "team-a") for p in CLAIM_PROFILES]
    assert all(decide_template(o, dra_policy).reason == "platform-template-ok" for o in objs)


@pytest.mark.parametrize("argv, env_policy, code, namespaces, err", [
    pytest.param(["--namespace", "team-b", "--namespace", "team-a", "--namespace", "team-b"], str(DRA_POLICY_FILE), 0,
                 ["team-b", "team-a"], "", id="given namespaces replace the default, in their order, once each"),
    pytest.param([], str(DRA_POLICY_FILE), 0, ["airflow", "ml-jobs"], "",
                 id="the policy defaults to the one Airflow's parse-time check reads"),
    pytest.param(["--policy", str(POLICY_FILE)], None, 0, [],
                 "policy reference has no DRA claim profile: no templates to make",
                 id="a policy without DRA claim profiles prints nothing and says why"),
    pytest.param([], None, 2, [], f"no policy file: pass --policy FILE or set {POLICY_ENV}",
                 id="no policy file exits 2 and says how to name one"),
    pytest.param(["--policy", "/nonexistent.yaml"], None, 2, [], "invalid policy:\n/nonexistent.yaml: cannot read",
                 id="an unreadable policy exits 2 naming the file"),
    pytest.param(["--namespace", "Team_A"], str(DRA_POLICY_FILE), 2, [], "not a namespace name: 'Team_A'",
                 id="a namespace that is no valid name exits 2"),
])
def test_run_dra_templates(monkeypatch, capsys, argv, env_policy, code, namespaces, err):
    monkeypatch.delenv(POLICY_ENV, raising=False)
    if env_policy:
        monkeypatch.setenv(POLICY_ENV, env_policy)
    printed_code, objs, printed_err = _printed(capsys, ["templates", *argv])
    assert printed_code == code and err in printed_err
    assert list(dict.fromkeys(o["metadata"]["namespace"] for o in objs)) == namespaces


def _with_tenants(tenants: dict) -> dict:
    data = yaml.safe_load(DRA_POLICY_FILE.read_text())
    data["spec"]["tenants"] = tenants
    return data


@pytest.mark.parametrize("tenants, namespaces, open_entries", [
    pytest.param({"a": {"match": [{"namespace": "z"}, {"namespace": "y", "podLabels": {"team": "a"}}]},
                  "b": {"match": [{"namespace": "z"}]}}, ["y", "z"], [],
                 id="named namespaces are used sorted and once, and no entry is open"),
    pytest.param({"a": {"match": [{"namespace": "y"}, {"dagIdPrefix": "a_"}]},
                  "b": {"match": [{"serviceAccount": "ops/worker"}]}}, ["y"], ["a #2", "b #1"],
                 id="entries without a namespace are reported, a ServiceAccount's namespace included"),
])
def test_default_namespaces_and_open_match_entries(tmp_path, capsys, tenants, namespaces, open_entries):
    policy = _with_tenants(tenants)
    assert open_match_entries(parse_policy(policy)) == open_entries
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    _, objs, _ = _printed(capsys, ["templates", "--policy", str(tmp_path / "policy.yaml")])
    assert list(dict.fromkeys(o["metadata"]["namespace"] for o in objs)) == namespaces


def test_match_entries_without_a_namespace_are_named_on_stderr(tmp_path, capsys):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(_with_tenants({"a": {"match": [{"namespace": "y"}, {"group": "gpu-users"}]}})))
    code, objs, err = _printed(capsys, ["templates", "--policy", str(path)])
    assert code == 0 and _where(objs) == [("y", f"gpu-platform-{p}") for p in CLAIM_PROFILES]
    assert "match entries without a namespace (a #2) let pods run in any namespace: give those namespaces with " \
           "--namespace" in err
    path.write_text(yaml.safe_dump(_with_tenants({"a": {"match": [{"group": "gpu-users"}]}})))
    code, objs, err = _printed(capsys, ["templates", "--policy", str(path)])
    assert (code, objs) == (2, []) and "no namespace: the tenants' match entries name none" in err


def test_templates_follow_the_policys_profile_order(dra_policy):
    assert [o["metadata"]["name"] for o in templates(dra_policy, ["a"])] == [f"gpu-platform-{p}" for p in CLAIM_PROFILES]
    assert templates(dra_policy, []) == []


def test_the_command_is_wired_into_gpu_webhook(capsys):
    assert main(["dra", "templates", "--policy", str(DRA_POLICY_FILE), "--namespace", "x"]) == 0
    assert capsys.readouterr().out.startswith("# GENERATED by `gpu-webhook dra templates` for policy reference-with-dra")
