"""What every route shares: the replica's ``Ingress``, who is calling, the user header, and the error statuses a
route documents in the OpenAPI schema (so the schema tells clients, and schemathesis, the truth)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

from deployments.errors import Forbidden
from edge.access import ANONYMOUS, Principal
from edge.ingress import Ingress
from edge.openai.protocol import ErrorResponse

_DESCRIPTIONS = {
    400: "The model cannot serve the request as asked (a limit of the loaded model or its config).",
    401: "No API key, or a key that is not valid.",
    403: "The key's role may not do this.",
    404: "Unknown model, content, item or tool, or a service this application does not deploy.",
    409: "Conflicts with work in progress (a retrain running; content still being made).",
    413: "The request body is too large.",
    422: "The request does not match the schema; `error.param` names the field.",
    429: "Over the key's rate limit or quota; `Retry-After` says when to come back.",
    500: "A bug; logged with the request id.",
    502: "The model answered with nothing usable.",
    503: "No capacity or no replica now; `Retry-After` says when to try again.",
    504: "A service did not answer within its timeout.",
}
# What any /v1 route may answer besides its own statuses: access control, body limits, schema errors, limits; 404:
# a service the application does not deploy.
COMMON = (400, 401, 403, 404, 413, 422, 429)  # 400: also a body that is not JSON text at all


def error_responses(*statuses: int, common: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (and the common ones), each with the error body."""
    codes = sorted({*statuses, *(COMMON if common else ())})
    return {code: {"model": ErrorResponse, "description": _DESCRIPTIONS[code]} for code in codes}


async def current_ingress(request: Request) -> Ingress:
    """The ``Ingress`` of the replica answering this request. Dependencies are ``async``: FastAPI runs a plain
    ``def`` one in its thread pool, a thread hand-off per request for a field read."""
    return request.app.state.ingress


IngressDep = Annotated[Ingress, Depends(current_ingress)]


async def current_principal(request: Request) -> Principal:
    """Who is calling (set by ``AccessMiddleware``): a key's name, role and bound user, or anonymous."""
    return getattr(request.state, "principal", ANONYMOUS)


CallerDep = Annotated[Principal, Depends(current_principal)]
UserHeader = Annotated[
    str | None,
    Header(alias="X-User-ID", max_length=256, description="End-user id for sticky experiment assignment."),
]


def require_admin(caller: Principal) -> None:
    """Routes that change the system: an ``admin`` key (or open, anonymous mode on a laptop)."""
    if caller.role not in ("admin", "anonymous"):
        raise Forbidden(f"key {caller.name!r} ({caller.role}) may not do this: it needs an admin key")
