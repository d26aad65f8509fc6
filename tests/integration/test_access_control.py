"""Access on the live app: keys made with the CLI, roles, users bound to their keys, and rate limits that hold
across two ingress replicas (counted in the machine's Redis)."""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from app.deploy import app_of, deployments_of
from tests.conftest import REDIS_URL, redis_reachable

APP = "content-studio"
CLI = Path(sys.executable).with_name("content-studio")


def new_key(name: str, role: str, user: str | None = None) -> tuple[str, dict]:
    """A key and its entry, made as an operator makes them (`content-studio new-key`)."""
    args = [str(CLI), "new-key", "--name", name, "--role", role, *(["--user", user] if user else [])]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    key = done.stdout.split("key (shown once): ", 1)[1].split()[0]
    entry = json.loads(done.stdout.strip().splitlines()[-1])
    assert key not in done.stdout.strip().splitlines()[-1]  # the entry holds the hash, never the key
    return key, entry


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.skipif(bool(redis_reachable()), reason=f"needs Redis at {REDIS_URL}")
def test_roles_bound_users_and_shared_rate_limits(client: httpx.Client, deployed_app: dict, redeploy) -> None:
    run = uuid.uuid4().hex[:6]
    admin, admin_entry = new_key(f"ops-{run}", "admin")
    ann, ann_entry = new_key(f"ann-{run}", "user", user="ann")
    carl, carl_entry = new_key(f"carl-{run}", "user", user="carl")
    backend, backend_entry = new_key(f"backend-{run}", "service")
    config = copy.deepcopy(deployed_app["config"])
    ingress = deployments_of(app_of(config))["ingress"]
    ingress.pop("autoscaling_config", None)
    ingress["num_replicas"] = 2
    ingress["user_config"]["access"] = {
        "keys": [admin_entry, ann_entry, carl_entry, backend_entry],
        "limits": {"user": {"requests_per_minute": 8}, "redis_url": REDIS_URL},
    }
    redeploy(config, app=APP, healthy=("ingress",))
    deadline = time.monotonic() + 60
    while client.get("/v1/models").status_code != 401 and time.monotonic() < deadline:
        time.sleep(0.5)  # both ingress replicas apply the keys

    assert client.get("/v1/models").status_code == 401  # no key
    assert client.get("/v1/models", headers=bearer("cs-not-a-key")).status_code == 401
    health = client.get("/v1/health", headers=bearer(backend)).json()
    assert health["ingress"]["rate_limits"]["backend"] == "redis"

    # A user key cannot change the system; an admin key can.
    refused = client.post("/v1/recommend/retrain", headers=bearer(ann))
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert client.post("/v1/recommend/retrain", headers=bearer(admin)).status_code in (200, 409)

    # A user key acts as its user, whatever the request says; a service key acts for anyone.
    event = {"user_id": "bob", "item_id": "item-3", "event": "like"}
    as_ann = client.post("/v1/interactions", json=event, headers=bearer(ann)).json()
    assert as_ann["events"][0]["user_id"] == "ann"
    as_backend = client.post("/v1/interactions", json=event, headers=bearer(backend)).json()
    assert as_backend["events"][0]["user_id"] == "bob"
    record = client.post("/v1/content", json={"topic": "kites", "user_id": "bob"}, headers=bearer(ann)).json()
    assert record["user_id"] == "ann"

    # Rate limits hold across both ingress replicas: one counter in Redis.
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)  # stay within one minute's window

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=deployed_app["url"], timeout=60, headers=bearer(carl)) as http:
            return list(await asyncio.gather(*(http.get("/v1/models") for _ in range(20))))

    answers = asyncio.run(burst())
    codes = [r.status_code for r in answers]
    assert codes.count(200) == 8 and codes.count(429) == 12, codes
    limited = next(r for r in answers if r.status_code == 429)
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.json()["error"]["type"] == "rate_limit_exceeded"
    assert client.get("/v1/models", headers=bearer(ann)).status_code == 200  # limits are per key
