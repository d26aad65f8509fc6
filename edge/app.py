"""The ingress's FastAPI app: built in each ingress replica over that replica's ``Ingress`` (no module-level state).

Routes live in their own modules by family, as vLLM keeps them (edge/openai/ for the OpenAI-compatible routes,
edge/routes/ for content, recommendations, health and the studio page); each reaches its replica's ``Ingress``
through the ``IngressDep`` dependency (edge/dependencies.py). Errors are answered here, once, in OpenAI's shape
(``ServiceError.body``): a ``ServiceError`` with its status, a schema problem a 422 naming the field, the
framework's own refusals (an unknown path, a method the path has not) with theirs.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from deployments.errors import SchemaError, ServiceError, TooLarge, for_status
from edge.access import AccessMiddleware, BodyTooLarge
from edge.ingress import Ingress
from edge.openai import (
    embeddings,
    serving_chat,
    serving_completions,
    serving_media,
    serving_models,
    serving_responses,
)
from edge.routes import content, health, jobs, recommend, studio
from edge.routes.health import app_version

ROUTERS = (
    serving_models,
    serving_completions,
    serving_chat,
    serving_responses,
    serving_media,
    embeddings,
    recommend,
    content,
    jobs,
    health,
    studio,
)
_TYPE_TAG = re.compile(
    r"^(str|int|float|bool|none|constrained-\w+|list\[.*\]|dict\[.*\]|function-\w+\[.*\]|union\[.*\]|"
    r"literal\[.*\]|tagged-union\[.*\]|json-or-python\[.*\])$"
)


def error_response(error: ServiceError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=error.status, content=error.body(), headers={**error.headers(), **(headers or {})})


def _field_name(loc: tuple[Any, ...]) -> str:
    # Union members add their type to the location (prompt.str, prompt.list[str]); people need the field.
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header") and not _TYPE_TAG.match(str(p))]
    return ".".join(parts) or "body"


def validation_error_response(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    # A JSON syntax error is located by character offset, which is no field: the body itself is wrong.
    field = "body" if first.get("type") == "json_invalid" else _field_name(tuple(first.get("loc", ())))
    error = SchemaError(f"{field}: {first.get('msg', 'invalid value')}", field, code="invalid_value")
    body = error.body()
    body["detail"] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return JSONResponse(status_code=error.status, content=body)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of ``app`` answers on ``path``."""
    scope = {"type": "http", "path": path, "method": "GET"}
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def create_app(ingress: Ingress) -> FastAPI:
    """The app of one ingress replica: every route family, the error handlers and access control."""
    app = FastAPI(
        title="Content Studio",
        version=app_version(),
        description="Text, image, voice and recommendation models as independent Ray Serve deployments, with an "
        "OpenAI-compatible API. Errors: `{error: {message, type, param, code}}`, `param` naming the field.",
    )
    app.state.ingress = ingress

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(list(exc.errors()))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(TooLarge(str(exc), "body"))

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The framework's own refusals (an unreadable body, an unknown path or method) in our error shape; a
        405 lists every method the path has, not only the first route's."""
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        error = for_status(exc.status_code, str(exc.detail), "body" if exc.status_code == 400 else None)
        return error_response(error, headers)

    for module in ROUTERS:
        app.include_router(module.router)
    app.add_middleware(AccessMiddleware, policy=lambda: ingress.access, limiter=lambda: ingress.limiter)
    return app
