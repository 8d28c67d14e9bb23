"""Which methods a path supports, told as HTTP says (RFC 9110, sections 9.3.7, 10.2.1 and 15.5.6).

``OPTIONS`` on any path of the API is answered 204 with an ``Allow`` header naming every method of that
path, and a 405 (a method the path does not support) carries the same complete ``Allow``. On their own,
Starlette and FastAPI answer both with the methods of the first route whose path matched, missing those
of the other routes of the same path (``GET`` and ``DELETE /v1/runs/{run_id}`` are two routes).

A pure ASGI middleware, registered inside the CORS middleware (which answers preflight requests itself):
it reads the app's routes from the scope, answers ``OPTIONS`` without calling the app (no authentication:
it tells only what the route table says), and completes the ``Allow`` header of a 405 on its way out.
``OPTIONS`` on a path no route has is left to the app (404).
"""

from __future__ import annotations

from fastapi import Response
from starlette.datastructures import MutableHeaders
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AllowedMethodsMiddleware", "allowed_methods"]


# The methods asked about (RFC 9110's, less CONNECT and TRACE): a route is asked whether it answers each
# one at the path, through Starlette's public ``matches`` (FastAPI nests the routes of included routers).
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(scope: Scope) -> list[str]:
    """Every method a route of the app answers at the scope's path, and ``OPTIONS`` (answered here when
    no route does), sorted; [] when no route has that path."""
    routes = scope["app"].router.routes
    methods = {
        method
        for method in _METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in routes)
    }
    return sorted(methods | {"OPTIONS"}) if methods else []


class AllowedMethodsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":
            methods = allowed_methods(scope)
            if methods and not _answers_options(scope):
                await Response(status_code=204, headers={"Allow": ", ".join(methods)})(scope, receive, send)
                return

        async def send_complete_allow(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                MutableHeaders(scope=message)["Allow"] = ", ".join(allowed_methods(scope))
            await send(message)

        await self.app(scope, receive, send_complete_allow)


def _answers_options(scope: Scope) -> bool:
    """Whether a route of the app answers OPTIONS at this path itself."""
    return any(route.matches(scope)[0] == Match.FULL for route in scope["app"].router.routes)
