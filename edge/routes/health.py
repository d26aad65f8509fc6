"""Health and the probes the ecosystem sends: ``/v1/health`` (every service, its model and placement),
``/health`` (200 when every service is ready, as vLLM and guidellm expect), ``/ping`` and ``/version``; and the
running experiments (``/v1/experiments``)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from deployments.common import StrictModel
from deployments.registry import PIPELINE
from edge.dependencies import IngressDep, error_responses
from edge.experiments import ExperimentList, report
from edge.ingress import Ingress

router = APIRouter(tags=["Health"])


def app_version() -> str:
    """The installed package's version (pyproject.toml): the one the API reports."""
    return metadata.version("content-studio")


class HealthReport(StrictModel):
    status: str
    services: dict[str, dict[str, Any]]
    ingress: dict[str, Any] | None = None  # this ingress replica: access mode, where rate limits are counted


class Version(StrictModel):
    version: str


async def _health(ingress: Ingress) -> tuple[bool, dict[str, dict[str, Any]]]:
    services = await ingress.describe_all()
    return all(info.get("status") == "ok" for info in services.values()), services


@router.get(
    "/v1/health",
    response_model=HealthReport,
    responses={
        503: {"model": HealthReport, "description": "A service is not ready: its entry says why."},
        **error_responses(),
    },
)
async def health(ingress: IngressDep) -> JSONResponse:
    ok, services = await _health(ingress)
    body = {"status": "ok" if ok else "degraded", "services": services, "ingress": ingress.describe_self()}
    return JSONResponse(status_code=200 if ok else 503, content=body)


class Status(StrictModel):
    status: str


@router.get(
    "/health",
    response_model=Status,
    responses={503: {"model": Status, "description": "A service is not ready (see /v1/health for which)."}},
)
async def ready(ingress: IngressDep) -> JSONResponse:
    """200 when every service is ready, 503 otherwise (the probe vLLM serves and guidellm sends first)."""
    ok, _ = await _health(ingress)
    return JSONResponse(status_code=200 if ok else 503, content={"status": "ok" if ok else "degraded"})


@router.get("/ping", response_model=Status)
async def ping() -> Status:
    """The ingress is up (it answers without asking the services)."""
    return Status(status="ok")


@router.get("/version", response_model=Version)
async def version() -> Version:
    return Version(version=app_version())


@router.get("/v1/experiments", response_model=ExperimentList, responses=error_responses())
async def experiments(ingress: IngressDep) -> ExperimentList:
    """Each experiment's variants, weights, requests, errors and latency percentiles (counted by this
    ingress replica; Prometheus has the fleet-wide series), and the content made by each variant with the
    interactions it received."""
    try:
        engagement = await ingress.call(PIPELINE, "experiment_engagement")
    except Exception:  # engagement is a bonus: the request counts are here
        engagement = {}
    stats = ingress.stats
    return report(ingress.config.experiments, stats.snapshot(), engagement, stats.since, stats.replica)
