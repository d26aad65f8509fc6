"""Load Serve configs and derive their tiny-model variants.

A tiny variant keeps what a config says about *placement* (GPUs, custom resources, replicas per node,
autoscaling) and swaps in the tiny models' service settings from ``configs/local.yaml`` and small CPU requests,
so that a GPU or cluster profile can be deployed on a test machine (with fake GPUs advertised to Ray) or checked
quickly on a real GPU, with the same resource shape as in production.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "configs" / "local.yaml"
HALF_PRECISION_SERVICES = ("text", "image")  # Coqui voices and ALS factors stay float32


def load(path: str | Path) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def app_of(config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    apps = config["applications"]
    return apps[0] if name is None else next(a for a in apps if a["name"] == name)


def deployments_of(app: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in app["deployments"]}


def tiny_variant(
    config: dict[str, Any],
    *,
    name: str | None = None,
    route_prefix: str | None = None,
    num_cpus: float = 0.1,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The first application of ``config`` with tiny models and small CPU/memory requests (GPUs kept)."""
    app = copy.deepcopy(app_of(config))
    local_app = app_of(load(LOCAL))
    local = deployments_of(local_app)
    app["runtime_env"] = copy.deepcopy(local_app.get("runtime_env", {}))
    if name:
        app["name"] = name
    if route_prefix:
        app["route_prefix"] = route_prefix
    for deployment in app["deployments"]:
        tiny = copy.deepcopy(local[deployment["name"]]["user_config"])
        if dtype and deployment["name"] in HALF_PRECISION_SERVICES:
            tiny["dtype"] = dtype
        deployment["user_config"] = tiny
        options = deployment.setdefault("ray_actor_options", {})
        options["num_cpus"] = num_cpus
        options.pop("memory", None)
        scaling = deployment.get("autoscaling_config")
        if scaling:  # start at the minimum: a test machine has no room for production's initial fleet
            scaling["initial_replicas"] = scaling.get("min_replicas", 1)
    return keep_possible_experiments(app)


def keep_possible_experiments(app: dict[str, Any]) -> dict[str, Any]:
    """Keep only the ingress's experiments whose variant deployments ``app`` has (in place; returns ``app``)."""
    names = set(deployments_of(app))
    for deployment in app["deployments"]:
        experiments = deployment["user_config"].get("experiments") if deployment["name"] == "ingress" else None
        if experiments:
            deployment["user_config"]["experiments"] = {
                name: e
                for name, e in experiments.items()
                if all(v["deployment"] in names for v in e["variants"].values())
            }
    return app


def gpus_requested(app: dict[str, Any], at: str = "initial_replicas") -> float:
    """GPUs an application asks for with every deployment at ``min_replicas``/``initial_replicas``/``max_replicas``."""
    total = 0.0
    for deployment in app["deployments"]:
        gpus = deployment.get("ray_actor_options", {}).get("num_gpus", 0)
        scaling = deployment.get("autoscaling_config")
        replicas = scaling.get(at, scaling.get("min_replicas", 1)) if scaling else deployment.get("num_replicas", 1)
        total += gpus * replicas
    return total
