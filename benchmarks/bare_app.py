"""The baseline server: the cheapest CORRECT admission webhook, under the same uvicorn and TLS.

It reads the body, parses the AdmissionReview and answers allow with the request's uid. Echoing
the uid is the least a webhook must do (kube-apiserver rejects a response whose uid does not
match), so this is what any webhook pays before judging anything; what the real webhook adds on
top of it is the price of judging.
"""

import orjson

HEADERS = [(b"content-type", b"application/json")]


async def app(scope, receive, send):
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    uid = orjson.loads(b"".join(chunks))["request"]["uid"]
    body = orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "response": {"uid": uid, "allowed": True}})
    await send({"type": "http.response.start", "status": 200,
                "headers": HEADERS + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
