"""The baseline server: a bare ASGI endpoint under the same uvicorn and TLS that reads the body
and answers a fixed allow. What the webhook adds on top of it is the price of judging."""

ALLOW = b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"","allowed":true}}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ALLOW)).encode())]


async def app(scope, receive, send):
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ALLOW})
