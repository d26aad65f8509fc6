"""Nothing stored is lost when everything stops: Serve, Ray and every node, then a fresh start; content jobs still
queued or running when it stopped are made after it."""

from __future__ import annotations

import io
import time

import httpx
import pytest
import soundfile as sf
from PIL import Image

from tests.integration.conftest import serve_cli, start_cluster, stop_cluster, wait_healthy
from tests.integration.serve_state import wait_serving_version


@pytest.mark.restarts_cluster
def test_content_assets_and_interactions_survive_a_full_stop_and_start(
    client: httpx.Client, deployed_app: dict, ray_cluster: dict
) -> None:
    record = client.post("/v1/content", json={"topic": "winter harbours", "user_id": "user-7"}).json()
    assert record["status"] == "complete"
    for item in (record["id"], "item-3", "item-7"):
        event = {"user_id": "keeper-9", "item_id": item, "event": "like"}
        assert client.post("/v1/interactions", json=event).status_code == 202
    version = client.post("/v1/recommend/retrain").json()["version"]  # factors trained on those likes
    wait_serving_version(version)  # every replica serves it within its refresh_s (there may be two by now)
    recommended = client.get("/v1/recommendations", params={"user_id": "keeper-9", "k": 5}).json()
    assert recommended["model_version"] == version
    assert recommended["items"][0]["reason"] in {"als", "content"}  # the likes were counted

    # Content jobs still queued (or running) when everything stops: they wait on the broker, and are made after.
    takes_jobs = "jobs" in deployed_app["config"]["applications"][0].get("args", {})
    jobs = [
        client.post("/v1/jobs", json={"topic": f"a harbour in winter, {n}", "user_id": "keeper-9"}).json()["id"]
        for n in range(6 if takes_jobs else 0)
    ]

    stop_cluster(ray_cluster)  # serve shutdown + ray stop: no process of the app is left
    ray_cluster.update(start_cluster())
    deployed_app.update(ray_cluster)
    serve_cli("deploy", str(deployed_app["config_path"]), dashboard=deployed_app["dashboard"])
    wait_healthy(deployed_app["url"])

    assert client.get(f"/v1/content/{record['id']}").json() == record
    assert Image.open(io.BytesIO(client.get(record["image_url"]).content)).format == "PNG"
    assert sf.read(io.BytesIO(client.get(record["audio_url"]).content))[1] == 16000
    assert (
        client.get("/v1/recommendations", params={"user_id": "keeper-9", "k": 5}).json() == recommended
    )  # factors too
    page = client.get("/v1/content", params={"limit": 100}).json()
    assert record["id"] in {item["id"] for item in page["items"]}
    made = []
    deadline = time.monotonic() + 240
    for job_id in jobs:
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
        assert job["state"] == "complete", job
        made.append(job["content_id"])
    assert len(set(made)) == len(jobs)  # each made once
