# The HTTP ceiling: a bare ASGI callable that does no model work at all, so whatever it serves
# per second under uvicorn is the most any Python model server can reach on this machine.

PREDICTION = b'{"prediction":"setosa"}'
# Built once: the ceiling should measure uvicorn and the event loop, not header assembly.
JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(PREDICTION)).encode()),
]
EMPTY_HEADERS = [(b"content-length", b"0")]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        # Answered rather than refused, so uvicorn logs no "lifespan unsupported" at start.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return

    # The whole body is read, as a real server must before it can parse the features.
    more_body = True
    while more_body:
        message = await receive()
        more_body = message.get("more_body", False)

    method, path = scope["method"], scope["path"]
    if method == "POST" and path == "/predict":
        status, headers, body = 200, JSON_HEADERS, PREDICTION
    elif method == "GET" and path == "/healthz":
        status, headers, body = 200, EMPTY_HEADERS, b""
    else:
        status, headers, body = 404, EMPTY_HEADERS, b""
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
