"""The ASGI middleware in front of every route: API key, body size, concurrency slots, Prometheus counts.

A plain ASGI middleware rather than `@app.middleware("http")`: it wraps the whole ASGI call, so a streamed
answer holds its concurrency slot until its last byte is sent (or the client hangs up), not only until the
route returns the response object.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Collection

from starlette.exceptions import HTTPException
from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunesmith.http.context import Limits, Metrics, error_response

UNMATCHED = "unmatched"  # the path label of requests no route matches, so random URLs cannot add series


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        router: Router,
        api_key: str | None,
        open_paths: Collection[str],
        limited_paths: Collection[str],
        limits: Limits,
        metrics: Metrics,
    ):
        self.app, self.router, self.api_key = app, router, api_key
        self.open_paths, self.limited_paths = set(open_paths), set(limited_paths)
        self.limits, self.metrics = limits, metrics
        self.busy = 0  # slots taken; only touched on the event loop, so no lock
        self.too_large = f"the request body is above this server's limit of {limits.max_body_bytes} bytes"

    def route_template(self, scope: Scope) -> str:
        """The matching route's path template (a partial match is a wrong method: still that route)."""
        partial = None
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.path
            if match == Match.PARTIAL and partial is None:
                partial = route.path
        return partial or UNMATCHED

    def authorized(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        header = headers.get(b"authorization", b"").decode("latin-1")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        return hmac.compare_digest(given.encode(), self.api_key.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = self.route_template(scope)
        # Auth first: an unauthenticated request is counted in one label-free counter and nowhere else.
        if self.api_key and path not in self.open_paths and not self.authorized(scope):
            self.metrics.unauthorized.inc()
            response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")
            await response(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the route raises, ServerErrorMiddleware answers 500
        try:
            status = await self.answer(path, scope, receive, send)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)

    async def answer(self, path: str, scope: Scope, receive: Receive, send: Send) -> int:
        """Run the request, holding a slot if its route does model work; returns the status sent."""
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limits.max_body_bytes:  # refused before it is read
            await error_response(413, self.too_large)(scope, receive, send)
            return 413
        limited = path in self.limited_paths
        if limited:
            # Every slot busy: answer now rather than queue without bound.
            if self.busy >= self.limits.max_concurrency:
                response = error_response(
                    429, "too many requests in flight; retry shortly", headers={"Retry-After": "1"}
                )
                await response(scope, receive, send)
                return 429
            self.busy += 1
            self.metrics.in_flight.inc()
        sent, received = {"status": 500}, 0

        async def counted_receive() -> Message:  # a chunked body declares no length: count it as it comes
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limits.max_body_bytes:
                raise HTTPException(413, self.too_large)  # FastAPI re-raises it; add_errors shapes it
            return message

        async def noted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, counted_receive, noted_send)
        finally:
            if limited:
                self.busy -= 1
                self.metrics.in_flight.dec()
        return sent["status"]
