"""One pipeline request, then its traces: the request id in every service's logs, the metrics in Prometheus."""

from __future__ import annotations

import glob
import json
import os
import time
import uuid

import httpx
import pytest
import ray

from deployments.telemetry import SPECS


@pytest.fixture(scope="module")
def traced(client: httpx.Client, deployed_app: dict) -> dict:
    request_id = f"trace-{uuid.uuid4().hex[:16]}"
    if "jobs" in deployed_app["config"]["applications"][0].get("args", {}):  # a content job, to its end
        job = client.post("/v1/jobs", json={"topic": "observability", "user_id": "user-2"}).json()
        deadline = time.monotonic() + 120
        while client.get(f"/v1/jobs/{job['id']}").json()["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the job did not end"
            time.sleep(0.5)
    response = client.post(
        "/v1/content", json={"topic": "observability", "user_id": "user-2"}, headers={"X-Request-ID": request_id}
    )
    assert response.status_code == 200
    like = {"user_id": "user-2", "item_id": response.json()["id"], "event": "like"}
    assert client.post("/v1/interactions", json=like, headers={"X-Request-ID": request_id}).status_code == 202
    # The local recommender vectorises without the embedding service: its metrics need a request of their own.
    embedding = {"model": "tiny-bert", "input": "observability"}
    assert client.post("/v1/embeddings", json=embedding, headers={"X-Request-ID": request_id}).status_code == 200
    jobs = "jobs" in deployed_app["config"]["applications"][0].get("args", {})
    return {"request_id": request_id, "response": response, "record": response.json(), "jobs": jobs}


def job_metrics_unless_taken(traced: dict) -> set[str]:
    """Job metrics are exported where the app takes jobs (a machine with Redis, as CI has)."""
    names = ("content_studio_jobs", "content_studio_job_queue_seconds", "content_studio_job_queue_depth")
    return set() if traced["jobs"] else {SPECS[name].exported_name(name) for name in names}


def test_the_request_id_comes_back(traced: dict) -> None:
    assert traced["response"].headers["x-request-id"] == traced["request_id"]


def test_the_request_id_is_in_the_json_logs_of_every_service(traced: dict) -> None:
    logs = os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs", "serve")
    found: dict[str, list[dict]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for deployment in ("ingress", "pipeline", "text", "image", "voice", "recommend", "embed"):
            lines = []
            for path in glob.glob(os.path.join(logs, f"replica_content-studio_{deployment}_*.log")):
                with open(path) as fh:
                    lines += [json.loads(line) for line in fh if traced["request_id"] in line]
            found[deployment] = lines
        if all(found.values()):
            break
        time.sleep(1)
    for deployment, lines in found.items():
        assert lines, f"no log line of {deployment} carries the request id"
        assert all(line["request_id"] == traced["request_id"] for line in lines)
        assert all(line["deployment"] == f"content-studio_{deployment}" and line["levelname"] for line in lines)


def scrape() -> str:
    ports = {node["MetricsExportPort"] for node in ray.nodes() if node["Alive"]}
    texts = []
    for port in ports:
        try:
            texts.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        except httpx.HTTPError:
            continue
    return "\n".join(texts)


def series(text: str, name: str) -> list[tuple[str, float]]:
    return [
        (line.split(" ")[0], float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    ]


def test_the_metrics_show_the_request_its_stages_and_its_tokens(traced: dict) -> None:
    wanted = {
        "ray_content_studio_tokens_generated_total",
        "ray_content_studio_images_generated_total",
        "ray_content_studio_audio_seconds_synthesized_total",
        "ray_content_studio_recommendations_total",
        "ray_content_studio_embeddings_total",
        "ray_content_studio_pipeline_results_total",
        "ray_content_studio_pipeline_stage_seconds_bucket",
        "ray_content_studio_requests_total",
        "ray_serve_num_http_requests_total",
    }
    deadline = time.monotonic() + 90
    text = ""
    while time.monotonic() < deadline:
        text = scrape()
        routes = " ".join(key for key, _ in series(text, "ray_serve_num_http_requests_total"))
        if all(series(text, name) for name in wanted) and "/v1/content" in routes:
            break
        time.sleep(3)
    missing = [name for name in wanted if not series(text, name)]
    assert not missing, missing
    assert sum(v for _, v in series(text, "ray_content_studio_tokens_generated_total")) > 0
    assert sum(v for _, v in series(text, "ray_content_studio_audio_seconds_synthesized_total")) > 0
    stages = {key for key, _ in series(text, "ray_content_studio_pipeline_stage_seconds_count")}
    for stage in ("article", "image", "audio", "recommendations", "store", "total"):
        assert any(f'stage="{stage}"' in key for key in stages), stage
    http = series(text, "ray_serve_num_http_requests_total")
    assert any('route="/v1/content"' in key for key, _ in http) or any("/v1/content" in key for key, _ in http)


def test_every_metric_we_declare_is_exported(traced: dict) -> None:
    text = scrape()
    declared = {spec.exported_name(name) for name, spec in SPECS.items()}
    seen = {name for name in declared if series(text, name)}
    # stage errors only appear once a stage fails, retrains once one ran; the traced requests touch the rest
    assert declared - seen <= {
        "ray_content_studio_pipeline_stage_errors_total",
        "ray_content_studio_interactions_total",
        "ray_content_studio_recommender_retrains_total",
        *job_metrics_unless_taken(traced),
    }


def test_the_dashboard_queries_find_their_series(traced: dict) -> None:
    from tests.unit.test_monitoring import dashboard_metrics

    text = scrape()
    # Only shown when they happen: GPU series need a real GPU; failed stages and HTTP errors need failures.
    conditional = {
        "ray_node_gpus_utilization",
        "ray_node_gram_used",
        "ray_content_studio_pipeline_stage_errors_total",
        "ray_content_studio_recommender_retrains_total",
        "ray_serve_num_http_error_requests_total",
        *job_metrics_unless_taken(traced),
    }
    missing = {name for name in dashboard_metrics() - conditional if not series(text, name)}
    assert not missing, missing
