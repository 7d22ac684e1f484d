"""The ceiling of the design: the webhook's own HTTP path with the decision taken out.

Everything ``serve`` does around a decision (the Content-Type and size checks, reading the
AdmissionReview into an AdmissionRequest, the response, the metrics) with every pod allowed
unjudged. Its ratio to the bare endpoint is the most any decision could reach on this server;
the distance from it to the real webhook is the decision's own price.
"""

from airflow_gpu_webhook.core.decision import Decision
from airflow_gpu_webhook.core.policy import load_policy
from airflow_gpu_webhook.server.app import AdmissionEndpoints, Runtime, create_app
from benchmarks.core import ROOT

app = create_app(Runtime(policy=load_policy(ROOT / "manifests" / "policy.yaml")))
assert isinstance(app, AdmissionEndpoints)
app.steps = {path: (lambda review: Decision.allow("unjudged")) for path in app.steps}
