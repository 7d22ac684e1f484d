"""The AdmissionReview wire format: what is refused as a bad request, and the response shape."""

from __future__ import annotations

import base64
import json

import orjson
import pytest

from airflow_gpu_webhook.core.decision import Decision, Violation
from airflow_gpu_webhook.core.tenancy import ANONYMOUS, UserInfo
from airflow_gpu_webhook.server.review import CLAIM_TEMPLATE, POD, BadReview, parse_review, review_response

from conftest import admission_review, airflow_fixture, claim_template_review

TEMPLATE = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
            "metadata": {"name": "gpu-platform-a100-dra", "namespace": "ml-jobs"},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}}}}


def _review(**request_changes) -> bytes:
    review = admission_review(airflow_fixture("kpo_cpu_plain")["pod"], "airflow")
    review["request"].update(request_changes)
    return orjson.dumps(review)


def _template_review(**request_changes) -> bytes:
    review = claim_template_review(TEMPLATE, "ml-jobs")
    review["request"].update(request_changes)
    return orjson.dumps(review)


BAD = [
    ("malformed JSON is refused", b'{"apiVersion": ', "not valid JSON"),
    ("a JSON array is refused", b"[]", "must be a JSON object"),
    ("admission.k8s.io/v1beta1 is refused", orjson.dumps({**json.loads(_review()), "apiVersion": "admission.k8s.io/v1beta1"}),
     "expected apiVersion admission.k8s.io/v1"),
    ("a review without request is refused", orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
     "has no request"),
    ("a request without uid is refused", _review(uid=""), "request.uid is missing"),
    ("a Deployment is refused", _review(kind={"group": "apps", "version": "v1", "kind": "Deployment"}),
     "only core/v1 Pods and resource.k8s.io/v1 ResourceClaimTemplates and ResourceClaims, not apps/v1/Deployment"),
    ("a ResourceClaimTemplate in v1beta2 is refused, pointing at the rule's versions",
     _template_review(kind={"group": "resource.k8s.io", "version": "v1beta2", "kind": "ResourceClaimTemplate"}),
     "not resource.k8s.io/v1beta2/ResourceClaimTemplate; check the webhook configuration's rules (apiVersions [v1] "
     "with matchPolicy Equivalent)"),
    ("a ResourceClaim in v1beta2 is refused", _template_review(kind={"group": "resource.k8s.io", "version": "v1beta2",
                                                                   "kind": "ResourceClaim"}),
     "not resource.k8s.io/v1beta2/ResourceClaim"),
    ("a CREATE without the template is refused", _template_review(object=None),
     "a CREATE request must carry the ResourceClaimTemplate in request.object"),
    ("an UPDATE without the old template is refused", _template_review(operation="UPDATE"),
     "an UPDATE request must carry the ResourceClaimTemplate in request.object and request.oldObject"),
    ("a CREATE without the pod is refused", _review(object=None), "must carry the pod"),
    ("an object that is not a mapping is refused", _review(object=[1, 2]), "must be a JSON object"),
    ("a namespace that is not a string is refused", _review(namespace={"a": 1}), "request.namespace must be a string"),
    ("an UPDATE without the old pod is refused", _review(operation="UPDATE"), "must carry the pod in request.object "
                                                                             "and request.oldObject"),
    ("an old object that is not a mapping is refused", _review(oldObject="x"), "request.oldObject must be a JSON"),
    ("a userInfo that is not a mapping is refused", _review(userInfo="root"), "request.userInfo must be a JSON"),
    ("groups that are not a list of strings are refused", _review(userInfo={"username": "u", "groups": "g"}),
     "a list of string groups"),
    ("a username that is not a string is refused", _review(userInfo={"username": 1}), "a string username"),
]


@pytest.mark.parametrize("description, body, words", BAD, ids=[b[0] for b in BAD])
def test_bad_reviews_are_refused_with_a_clear_400(description, body, words):
    with pytest.raises(BadReview) as caught:
        parse_review(body)
    assert caught.value.status == 400 and words in caught.value.message


def test_a_good_review_is_read_with_its_namespace_and_dry_run():
    request = parse_review(_review(dryRun=True))
    assert (request.kind, request.operation, request.namespace, request.dry_run) == (POD, "CREATE", "airflow", True)
    assert request.object["metadata"]["labels"]["kubernetes_pod_operator"] == "True"


def test_a_resource_claim_template_review_is_read_as_that_kind():
    request = parse_review(_template_review())
    assert (request.kind, request.operation, request.namespace) == (CLAIM_TEMPLATE, "CREATE", "ml-jobs")
    assert request.object == TEMPLATE


def test_an_update_carries_the_old_pod_and_the_requester():
    old = airflow_fixture("kpo_cpu_plain")["pod"]
    request = parse_review(_review(operation="UPDATE", oldObject=old,
                                   userInfo={"username": "system:serviceaccount:airflow:worker",
                                             "groups": ["system:serviceaccounts", "system:authenticated"]}))
    assert request.old_object == old and request.object is not None
    assert request.user_info == UserInfo("system:serviceaccount:airflow:worker",
                                         ("system:serviceaccounts", "system:authenticated"))


def test_a_review_without_user_info_has_an_anonymous_requester():
    review = json.loads(_review())
    del review["request"]["userInfo"]
    assert parse_review(orjson.dumps(review)).user_info == ANONYMOUS == UserInfo("", ())


def test_an_allow_with_a_patch_carries_base64_json_patch_and_the_uid():
    patch = ({"op": "add", "path": "/metadata/labels/a", "value": "b"},)
    out = review_response("u-1", Decision.allow("mutated", patch, ("careful",)))
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    response = out["response"]
    assert (response["uid"], response["allowed"], response["patchType"]) == ("u-1", True, "JSONPatch")
    assert json.loads(base64.b64decode(response["patch"])) == list(patch)
    assert response["warnings"] == ["careful"]
    assert "status" not in response


def test_a_denial_carries_code_and_message_and_never_a_patch():
    denial = Decision.deny([Violation("x", "first"), Violation("y", "second")])
    denial = Decision(**{**denial.__dict__, "patch": ({"op": "add", "path": "/a", "value": 1},)})
    response = review_response("u-2", denial)["response"]
    assert response == {"uid": "u-2", "allowed": False,
                        "status": {"code": 403, "message": "first; second", "reason": "Forbidden"}}


def test_an_internal_error_is_a_denial_with_code_500():
    response = review_response("u-3", Decision.error("boom"))["response"]
    assert response["allowed"] is False and response["status"]["code"] == 500
