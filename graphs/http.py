"""The ingress's FastAPI app: built in each ingress replica over that replica's ``Ingress`` (no module-level state).

Routes live in their own modules by family, as vLLM keeps them (graphs/openai/ for the OpenAI-compatible routes,
graphs/routes/ for content, recommendations, health and the studio page); each reaches its replica's ``Ingress``
through the ``IngressDep`` dependency. Errors are answered here, once: a ``ServiceError`` becomes OpenAI's error
shape with its status, a schema problem a 422 naming the field. ``error_responses`` documents in the OpenAPI
schema every status a route can answer, so the schema tells clients (and schemathesis) the truth.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from graphs.access import ANONYMOUS, AccessMiddleware, BodyTooLarge, Principal
from graphs.errors import ServiceError, error_body
from graphs.openai.protocol import ErrorResponse

VERSION = "0.2.0"
_DESCRIPTIONS = {
    400: "The model cannot serve the request as asked (a limit of the loaded model or its config).",
    401: "No API key, or a key that is not valid.",
    403: "The key's role may not do this.",
    404: "Unknown model, content, item or tool.",
    409: "Conflicts with work in progress (a retrain running; content still being made).",
    413: "The request body is too large.",
    422: "The request does not match the schema; `error.param` names the field.",
    429: "Over the key's rate limit or quota; `Retry-After` says when to come back.",
    500: "A bug; logged with the request id.",
    502: "The model answered with nothing usable.",
    503: "No capacity or no replica now; `Retry-After` says when to try again.",
    504: "A service did not answer within its timeout.",
}
# What any /v1 route may answer besides its own statuses: access control, body limits, schema errors, limits.
COMMON = (400, 401, 403, 413, 422, 429)  # 400: also a body that is not JSON text at all


def error_responses(*statuses: int, common: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (and the common ones), each with the error body."""
    codes = sorted({*statuses, *(COMMON if common else ())})
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}


def current_ingress(request: Request) -> Any:
    """The ``Ingress`` of the replica answering this request."""
    return request.app.state.ingress


IngressDep = Annotated[Any, Depends(current_ingress)]


def current_principal(request: Request) -> Principal:
    """Who is calling (set by ``AccessMiddleware``): a key's name, role and bound user, or anonymous."""
    return getattr(request.state, "principal", ANONYMOUS)


CallerDep = Annotated[Principal, Depends(current_principal)]


def require_admin(caller: Principal) -> None:
    """Routes that change the system: an ``admin`` key (or open, anonymous mode on a laptop)."""
    if caller.role not in ("admin", "anonymous"):
        raise ServiceError(
            403, f"key {caller.name!r} ({caller.role}) may not do this: it needs an admin key", None, "permission_error"
        )


_TYPE_TAG = re.compile(
    r"^(str|int|float|bool|none|constrained-\w+|list\[.*\]|dict\[.*\]|function-\w+\[.*\]|union\[.*\]|"
    r"literal\[.*\]|tagged-union\[.*\]|json-or-python\[.*\])$"
)


def _field_name(loc: tuple[Any, ...]) -> str:
    # Union members add their type to the location (prompt.str, prompt.list[str]); people need the field.
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header") and not _TYPE_TAG.match(str(p))]
    return ".".join(parts) or "body"


def validation_error_response(errors: list[dict[str, Any]]) -> JSONResponse:
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    # A JSON syntax error is located by character offset, which is no field: the body itself is wrong.
    field = "body" if first.get("type") == "json_invalid" else _field_name(tuple(first.get("loc", ())))
    message = f"{field}: {first.get('msg', 'invalid value')}"
    body = error_body(message, field, "invalid_request_error", "invalid_value")
    body["detail"] = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
    return JSONResponse(status_code=422, content=body)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route of ``app`` answers on ``path``."""
    scope = {"type": "http", "path": path, "method": "GET"}
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def create_app(ingress: Any) -> FastAPI:
    """The app of one ingress replica: every route family, the error handlers and access control."""
    from graphs.openai import serving_chat, serving_completions, serving_media, serving_models
    from graphs.routes import content, health, recommend, studio

    app = FastAPI(
        title="Content Studio",
        version=VERSION,
        description="Text, image, voice and recommendation models as independent Ray Serve deployments, with an "
        "OpenAI-compatible API. Errors: `{error: {message, type, param, code}}`, `param` naming the field.",
    )
    app.state.ingress = ingress

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(list(exc.errors()))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse(status_code=413, content=error_body(str(exc), "body", "request_too_large"))

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=exc.body(), headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """The framework's own refusals (an unreadable body, an unknown path or method) in our error shape; a
        405 lists every method the path has, not only the first route's."""
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app, request.url.path))
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        field = "body" if exc.status_code == 400 else None
        return JSONResponse(
            status_code=exc.status_code, content=error_body(str(exc.detail), field, kind), headers=headers
        )

    for module in (
        serving_models,
        serving_completions,
        serving_chat,
        serving_media,
        recommend,
        content,
        health,
        studio,
    ):
        app.include_router(module.router)
    app.add_middleware(AccessMiddleware, policy=lambda: ingress.access, limiter=lambda: ingress.limiter)
    return app


UserHeader = Annotated[
    str | None,
    Header(alias="X-User-ID", max_length=256, description="End-user id for sticky experiment assignment."),
]
