"""API keys with roles, fail-closed start, rate limits, CORS and the body limit, on a small app behind the same
middleware as the ingress."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request

from edge.access import (
    API_KEYS_ENV,
    AccessConfig,
    AccessMiddleware,
    AccessPolicy,
    BodyTooLarge,
    LimitsConfig,
    NoKeys,
    hash_key,
)
from edge.dependencies import current_principal
from edge.ingress import IngressConfig
from edge.rate_limits import RateLimiter
from tests.conftest import REDIS_URL, redis_reachable

ROOT = Path(__file__).resolve().parents[2]
POLICY: list[AccessPolicy] = [AccessPolicy()]
LIMITER: list[RateLimiter | None] = [None]


def entry(key: str, role: str, name: str | None = None, user_id: str | None = None) -> dict:
    return {"name": name or f"{role}-key", "role": role, "user_id": user_id, "sha256": hash_key(key)}


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

    @app.get("/v1/whoami")
    async def whoami(request: Request) -> dict:
        caller = await current_principal(request)
        return {"name": caller.name, "role": caller.role, "user": caller.user("someone-else")}

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/docs-like")
    async def open_page() -> dict:
        return {"ok": True}

    app.add_middleware(AccessMiddleware, policy=lambda: POLICY[0], limiter=lambda: LIMITER[0])
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

    set_policy(anonymous=True)
    LIMITER[0] = None
    yield set_policy
    LIMITER[0] = None


def test_anonymous_mode_is_open_and_counts_callers_by_address() -> None:
    assert request("GET", "/v1/models").status_code == 200
    assert request("GET", "/v1/whoami").json()["role"] == "anonymous"


def test_without_keys_and_without_anonymous_the_ingress_refuses_to_start(policy) -> None:
    with pytest.raises(NoKeys):
        policy()
    with pytest.raises(NoKeys):  # a keys file that is not there is no key either
        policy(keys_file="/nonexistent/keys.json")


def test_the_production_profile_does_not_start_without_keys(monkeypatch) -> None:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ingress")
    access = IngressConfig.model_validate(ingress["user_config"]).access
    assert not access.anonymous
    with pytest.raises(NoKeys):
        AccessPolicy.from_config(access)
    monkeypatch.setenv(API_KEYS_ENV, json.dumps([entry("ops-key", "admin")]))
    assert not AccessPolicy.from_config(access).anonymous  # with a key (from a Secret) it starts
    local = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    assert local["http_options"]["host"] == "127.0.0.1"  # the open local profile listens on loopback only


def test_a_configured_key_is_required_on_v1(policy) -> None:
    policy(keys=[entry("s3cret", "service")])
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
    monkeypatch.setenv(API_KEYS_ENV, json.dumps([entry("k1", "service", "one"), entry("k2", "admin", "two")]))
    policy()
    assert request("GET", "/v1/whoami", headers={"Authorization": "Bearer k2"}).json()["role"] == "admin"
    assert request("GET", "/v1/models").status_code == 401


def test_only_hashes_are_configured_never_keys() -> None:
    config = AccessConfig(keys=[entry("s3cret", "admin")])
    assert "s3cret" not in repr(config) and "s3cret" not in json.dumps(config.model_dump())
    with pytest.raises(ValueError):
        AccessConfig(keys=[{"name": "k", "role": "admin", "sha256": "s3cret"}])  # a key in clear is refused


def test_roles_and_bound_users(policy) -> None:
    policy(
        keys=[
            entry("u-key", "user", "ann", user_id="ann"),
            entry("s-key", "service", "backend"),
            entry("a-key", "admin", "ops"),
        ]
    )
    as_user = request("GET", "/v1/whoami", headers={"Authorization": "Bearer u-key"}).json()
    assert as_user == {"name": "ann", "role": "user", "user": "ann"}  # acts as ann, whatever it asks
    as_service = request("GET", "/v1/whoami", headers={"Authorization": "Bearer s-key"}).json()
    assert as_service == {"name": "backend", "role": "service", "user": "someone-else"}  # acts for anyone
    with pytest.raises(ValueError):
        AccessConfig(keys=[{"name": "x", "role": "user", "sha256": hash_key("x")}])  # a user key needs its user


def test_keys_rotate_by_editing_the_keys_file(policy, tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([entry("old-key", "service", "backend")]))
    policy(keys_file=str(path))
    assert request("GET", "/v1/models", headers={"Authorization": "Bearer old-key"}).status_code == 200
    path.write_text(json.dumps([entry("new-key", "service", "backend")]))
    os.utime(path, (time.time() + 5, time.time() + 5))  # a new mtime, as a Secret update gives
    assert request("GET", "/v1/models", headers={"Authorization": "Bearer new-key"}).status_code == 200
    assert request("GET", "/v1/models", headers={"Authorization": "Bearer old-key"}).status_code == 401


def test_bodies_over_the_limit_get_413(policy) -> None:
    policy(max_body_bytes=2048, anonymous=True)
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
    policy(cors_origins=["https://studio.example"], anonymous=True)
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


def test_over_the_request_limit_is_429_with_retry_after_and_probes_are_not_limited(policy) -> None:
    policy(keys=[entry("u-key", "user", "ann", user_id="ann"), entry("s-key", "service", "backend")])
    LIMITER[0] = RateLimiter(LimitsConfig(user={"requests_per_minute": 3}))
    ann = {"Authorization": "Bearer u-key"}
    assert [request("GET", "/v1/models", headers=ann).status_code for _ in range(3)] == [200] * 3
    refused = request("GET", "/v1/models", headers=ann)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.json()["error"]["type"] == "rate_limit_exceeded" and "ann" in refused.json()["error"]["message"]
    assert request("GET", "/v1/health", headers=ann).status_code == 200  # probes are never limited
    assert request("GET", "/v1/models", headers={"Authorization": "Bearer s-key"}).status_code == 200  # per key


def test_quotas_count_what_was_generated() -> None:
    limiter = RateLimiter(LimitsConfig(user={"tokens_per_minute": 100, "images_per_minute": 2}))
    from deployments.errors import ServiceError
    from edge.access import Principal

    ann = Principal("ann", "user", "ann")

    async def scenario() -> list[str]:
        outcomes = []
        await limiter.admit(ann)
        await limiter.charge(ann, tokens=60)
        await limiter.admit(ann)  # 60 of 100 tokens used: still admitted
        await limiter.charge(ann, tokens=60, images=2)
        try:
            await limiter.admit(ann)
        except ServiceError as exc:
            outcomes.append(f"{exc.status} {exc.message}")
        return outcomes

    [refusal] = asyncio.run(scenario())
    assert refusal.startswith("429") and "tokens" in refusal
    assert limiter.describe()["backend"] == "local"


@pytest.mark.skipif(bool(redis_reachable()), reason=f"needs Redis at {REDIS_URL}")
def test_limits_are_shared_through_redis_by_every_ingress_replica() -> None:
    from deployments.errors import ServiceError
    from edge.access import Principal

    config = LimitsConfig(user={"requests_per_minute": 4}, redis_url=REDIS_URL)
    replicas = [RateLimiter(config), RateLimiter(config)]  # two ingress replicas, one counter
    key = Principal(f"k{uuid.uuid4().hex[:8]}", "user", "ann")

    async def scenario() -> list[int]:
        codes = []
        for n in range(6):
            try:
                await replicas[n % 2].admit(key)
                codes.append(200)
            except ServiceError as exc:
                codes.append(exc.status)
        return codes

    assert asyncio.run(scenario()) == [200, 200, 200, 200, 429, 429]
    assert all(r.describe()["backend"] == "redis" for r in replicas)


def test_without_redis_each_replica_counts_alone_and_says_so() -> None:
    limiter = RateLimiter(LimitsConfig(user={"requests_per_minute": 1}, redis_url="redis://127.0.0.1:1/0"))
    from edge.access import Principal

    asyncio.run(limiter.admit(Principal("ann", "user", "ann")))  # Redis unreachable: counted here
    described = limiter.describe()
    assert described["backend"] == "local" and "unreachable" in described["note"]


def test_an_ingress_is_closed_until_its_config_arrives_and_refuses_to_start_without_keys() -> None:
    from edge.ingress import Ingress

    # What Serve builds, before it passes the user_config: the constructor gets no config.
    ingress = Ingress({name: None for name in ("text", "image", "voice", "recommend", "pipeline")})
    assert not ingress.access.anonymous and ingress.access.authenticate("Bearer anything") is None
    ingress.reconfigure({"access": {"anonymous": True}})  # the local profile
    assert ingress.access.anonymous
    with pytest.raises(NoKeys):  # a config without keys: the replica does not start
        ingress.reconfigure({"health_timeout_s": 5})


def test_the_edge_reads_capacities_from_the_first_health_check_not_the_first_request() -> None:
    """Serve health-checks a replica before it takes traffic: the capacity reader starts there, so the first
    burst after a start is already capped."""
    from edge.deployment import IngressDeployment
    from edge.ingress import Ingress

    cls = IngressDeployment.func_or_class
    ingress = cls.__new__(cls)  # the replica's class, without Serve's ASGI wrapper around it
    Ingress.__init__(ingress, {"text": None}, app_name="app")
    reads: list[str] = []

    async def details() -> dict:
        reads.append("read")
        replica = {"state": "RUNNING"}
        config = {"max_ongoing_requests": 4, "max_queued_requests": 2}
        deployments = {"ingress": {"replicas": [replica]}, "text": {"replicas": [replica], "deployment_config": config}}
        return {"applications": {"app": {"deployments": deployments}}}

    ingress.admission.details = details

    async def probe() -> dict:
        await cls.check_health(ingress)  # Serve's probe; no request has come in
        for _ in range(100):
            if reads:
                break
            await asyncio.sleep(0.01)
        ingress.admission._task.cancel()
        return ingress.admission.describe()

    described = asyncio.run(probe())
    assert reads and described["capacity"] == {"text": 6} and described["error"] is None
