"""Every shipped Serve config is valid for Serve and for the services' own strict configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from ray.serve.schema import ServeDeploySchema

from app.builder import AppArgs, build_app
from app.deploy import EDGE_IMPORT_PATH
from deployments.common import resolve_model_source
from deployments.registry import SERVICES
from edge.experiments import validate_experiments
from edge.haproxy import EdgeConfig
from edge.ingress import IngressConfig
from graphs.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([ROOT / "serve_config.yaml", *(ROOT / "configs").glob("*.yaml")])
SERVICE_CONFIGS = {
    **{name: spec.config_class() for name, spec in SERVICES.items()},  # the model services, from the registry
    "pipeline": PipelineConfig,
    "ingress": IngressConfig,
}


def assert_valid_serve_config(config: dict, name: str) -> None:
    schema = ServeDeploySchema.model_validate(config)
    for app in schema.applications:
        if app.import_path == EDGE_IMPORT_PATH:  # the C edge: its one deployment's config is EdgeConfig
            assert app.route_prefix is None and [d.name for d in app.deployments] == ["edge"], name
            EdgeConfig.model_validate(app.deployments[0].user_config)
            continue
        assert app.import_path == "app.builder:build_app"
        args = AppArgs.model_validate(app.args)
        kind = {name: service for service, names in args.variants.items() for name in names}
        names = {d.name for d in app.deployments}
        jobs = {"jobs"} if args.jobs is not None else set()
        assert names == {*args.deployed(), "ingress", *kind, *jobs}, (
            f"{name} must configure every deployment it deploys"
        )
        for deployment in app.deployments:
            if deployment.name == "jobs":  # the job consumer is configured by `args.jobs` (validated above)
                assert "user_config" not in deployment.model_fields_set, name
                continue
            SERVICE_CONFIGS[kind.get(deployment.name, deployment.name)].model_validate(deployment.user_config)
            if deployment.name == "ingress":
                experiments = IngressConfig.model_validate(deployment.user_config).experiments
                validate_experiments(experiments, {"text", "image", "voice", *kind})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_serve_config_validates(path: Path) -> None:
    assert_valid_serve_config(yaml.safe_load(path.read_text()), path.name)


def test_the_bench_config_validates() -> None:
    """The bench derives its app from the local profile: a stale override fails here, not after a bench's wait."""
    from bench.run import bench_config

    assert_valid_serve_config(bench_config("local", ROOT), "bench local")


def test_local_profile_points_at_the_tiny_models() -> None:
    app = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())["applications"][0]
    models = {d["name"]: d["user_config"]["model"] for d in app["deployments"] if "model" in d.get("user_config", {})}
    assert set(models) == {"text", "text-b", "image", "voice", "recommend", "embed"}
    assert all(m.startswith(".cache/models/tiny/") for m in models.values())
    assert app["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_production_config_gives_each_model_its_gpus_and_autoscaling() -> None:
    app = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
    deployments = {d["name"]: d for d in app["deployments"]}
    for name in ("text", "image", "voice"):
        assert deployments[name]["ray_actor_options"]["num_gpus"] > 0
    for name, deployment in deployments.items():
        scaling = deployment["autoscaling_config"]
        assert scaling["min_replicas"] <= scaling["initial_replicas"] <= scaling["max_replicas"], name


def test_builder_binds_five_deployments_with_validated_args(tiny_models) -> None:
    app = build_app({"text": {"model": str(tiny_models / "text"), "default_max_tokens": 4}})
    assert app._bound_deployment.name == "ingress"
    with pytest.raises(ValidationError, match="default_max_tokenz"):
        build_app({"text": {"model": "x", "default_max_tokenz": 4}})


def test_model_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTENT_STUDIO_ROOT", str(tmp_path))
    (tmp_path / "models" / "m").mkdir(parents=True)
    assert resolve_model_source("models/m") == str(tmp_path / "models" / "m")
    assert resolve_model_source(str(tmp_path / "models" / "m")) == str(tmp_path / "models" / "m")
    assert resolve_model_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(FileNotFoundError, match="build_tiny_models"):
        resolve_model_source("./models/missing")


def test_the_command_line_shows_the_pipelines_stages() -> None:
    from cli.main import STAGES as SHOWN
    from graphs.schemas import STAGES

    assert tuple(STAGES) == SHOWN
