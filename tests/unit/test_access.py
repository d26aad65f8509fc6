"""API keys, CORS and the body limit, on a small app behind the same middleware as the ingress."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request

from graphs.access import API_KEYS_ENV, AccessConfig, AccessMiddleware, AccessPolicy, BodyTooLarge

POLICY: list[AccessPolicy] = [AccessPolicy()]


def make_app() -> FastAPI:
    app = FastAPI()

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge):
        from fastapi.responses import JSONResponse

        return JSONResponse(status_code=413, content={"error": {"param": "body", "message": str(exc)}})

    @app.post("/v1/echo")
    async def echo(request: Request) -> dict:
        return {"size": len(await request.body())}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"data": []}

    @app.get("/docs-like")
    async def open_page() -> dict:
        return {"ok": True}

    app.add_middleware(AccessMiddleware, policy=lambda: POLICY[0])
    return app


def request(method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=make_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def policy(monkeypatch):
    monkeypatch.delenv(API_KEYS_ENV, raising=False)

    def set_policy(**config) -> AccessPolicy:
        POLICY[0] = AccessPolicy.from_config(AccessConfig(**config))
        return POLICY[0]

    set_policy()
    return set_policy


def test_without_keys_everything_is_open() -> None:
    assert request("GET", "/v1/models").status_code == 200


def test_a_configured_key_is_required_on_v1(policy) -> None:
    policy(api_keys=["s3cret"])
    missing = request("GET", "/v1/models")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["error"]["param"] == "authorization"
    assert "s3cret" not in missing.text
    assert request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert request("GET", "/v1/models", headers={"Authorization": "Basic s3cret"}).status_code == 401
    assert request("GET", "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert request("GET", "/docs-like").status_code == 200  # outside /v1: docs and the page stay open


def test_keys_from_the_environment(policy, monkeypatch) -> None:
    monkeypatch.setenv(API_KEYS_ENV, "k1, k2")
    policy()
    assert request("GET", "/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert request("GET", "/v1/models").status_code == 401


def test_keys_never_show_in_the_config_repr() -> None:
    config = AccessConfig(api_keys=["s3cret"])
    assert "s3cret" not in repr(config) and "s3cret" not in str(config.model_dump())


def test_bodies_over_the_limit_get_413(policy) -> None:
    policy(max_body_bytes=2048)
    assert request("POST", "/v1/echo", content=b"x" * 1000).json() == {"size": 1000}
    declared = request("POST", "/v1/echo", content=b"x" * 5000)
    assert declared.status_code == 413 and declared.json()["error"]["param"] == "body"

    async def chunks():
        for _ in range(5):
            yield b"x" * 1000

    chunked = request("POST", "/v1/echo", content=chunks())  # no Content-Length: counted while reading
    assert chunked.status_code == 413


def test_cors_is_closed_by_default() -> None:
    preflight = request(
        "OPTIONS", "/v1/models", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    simple = request("GET", "/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_configured_origins(policy) -> None:
    policy(cors_origins=["https://studio.example"])
    preflight = request(
        "OPTIONS",
        "/v1/models",
        headers={
            "Origin": "https://studio.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://studio.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    simple = request("GET", "/v1/models", headers={"Origin": "https://studio.example"})
    assert simple.headers["access-control-allow-origin"] == "https://studio.example"
    other = request("GET", "/v1/models", headers={"Origin": "https://other.example"})
    assert "access-control-allow-origin" not in other.headers
