"""The cluster material is consistent: KubeRay manifest (CRD schema, rendered Serve config, resources), the VM
launcher config, the image, and the pinned Ray version agree."""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from app.deploy import EDGE_IMPORT_PATH, app_of, gpus_requested, load
from cluster.render_rayservice import OUT, render
from edge.haproxy import EdgeConfig

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT.parent / "shared" / "kuberay"
MANIFEST = yaml.safe_load(OUT.read_text())
LAUNCHER = load(ROOT / "cluster" / "vm" / "cluster-launcher.yaml")
PRODUCTION = app_of(load(ROOT / "serve_config.yaml"))
QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti)?$")


def ray_pin() -> str:
    return re.search(r'"ray\[serve[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def quantity(value: str | int | float) -> float:
    number, unit = QUANTITY.match(str(value)).groups()
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[unit]
    return float(number) * scale


@dataclass
class NodeGroup:
    name: str
    cpus: float
    gpus: float
    memory: float
    min_nodes: int
    max_nodes: int


def kuberay_groups() -> list[NodeGroup]:
    groups = []
    for spec in MANIFEST["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        requests = spec["template"]["spec"]["containers"][0]["resources"]["requests"]
        groups.append(
            NodeGroup(
                spec["groupName"],
                quantity(requests["cpu"]),
                quantity(requests.get("nvidia.com/gpu", 0)),
                quantity(requests["memory"]),
                spec["minReplicas"],
                spec["maxReplicas"],
            )
        )
    return groups


def launcher_groups() -> list[NodeGroup]:
    return [
        NodeGroup(
            name,
            t["resources"].get("CPU", 0),
            t["resources"].get("GPU", 0),
            t["resources"].get("memory", 0),
            t.get("min_workers", 0),
            t.get("max_workers", 0),
        )
        for name, t in LAUNCHER["available_node_types"].items()
        if name != LAUNCHER["head_node_type"]
    ]


def test_the_committed_manifest_is_rendered_from_the_production_config() -> None:
    assert OUT.read_text() == render(), "run: python -m cluster.render_rayservice"
    embedded = yaml.safe_load(MANIFEST["spec"]["serveConfigV2"])
    assert embedded == load(ROOT / "serve_config.yaml")


def _strict(schema: dict) -> dict:
    """The CRD schema with unknown fields forbidden wherever it lists properties: typos become errors."""
    schema = copy.deepcopy(schema)

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.mark.skipif(not (CRDS / "ray.io_rayservices.yaml").exists(), reason="KubeRay CRDs not beside the repo")
def test_the_manifest_validates_against_kuberays_crd_schema() -> None:
    import jsonschema

    crd = yaml.safe_load((CRDS / "ray.io_rayservices.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == MANIFEST["apiVersion"].split("/")[1])
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator(schema).validate(MANIFEST)
    broken = copy.deepcopy(MANIFEST)
    broken["spec"]["rayClusterConfig"]["enableInTreeAutoscalng"] = True  # a typo must not pass silently
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(broken)


def test_one_ray_version_everywhere() -> None:
    version = ray_pin()
    cluster = MANIFEST["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == version
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_VERSION=([\d.]+)$", dockerfile, re.M).group(1) == version
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-gpu" in dockerfile
    images = [cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]]
    images += [g["template"]["spec"]["containers"][0]["image"] for g in cluster["workerGroupSpecs"]]
    images.append(LAUNCHER["docker"]["image"])
    assert {image.rsplit("-ray", 1)[1] for image in images} == {version}


def test_the_image_holds_every_layer_the_app_imports_and_the_migrations() -> None:
    from scripts.import_graph import imports, package

    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY --chown=\S+ (\S+) \1$", dockerfile, re.M))
    graph = imports()
    reached, frontier = set(), ["app.builder"]
    while frontier:  # every module Serve's import path reaches
        module = frontier.pop()
        if module not in reached:
            reached.add(module)
            frontier += graph[module]
    needed = {package(m) for m in reached}
    assert needed | {"migrations"} <= copied, sorted(needed | {"migrations"} - copied)
    assert "pip install --no-cache-dir -e" in dockerfile  # in place: the stores find migrations/ beside the code


def test_head_has_no_gpus_and_autoscaling_is_on() -> None:
    cluster = MANIFEST["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert head["rayStartParams"]["num-cpus"] == "0"
    resources = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources["requests"] and "nvidia.com/gpu" not in resources["limits"]
    assert LAUNCHER["available_node_types"][LAUNCHER["head_node_type"]]["resources"] == {"CPU": 0}


def test_gpu_limits_equal_requests() -> None:
    for group in MANIFEST["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["limits"] == resources["requests"], group["groupName"]


@pytest.mark.parametrize("groups", [kuberay_groups, launcher_groups], ids=["kuberay", "vm-launcher"])
def test_node_groups_hold_the_production_config(groups) -> None:
    nodes = groups()
    gpu_nodes = [n for n in nodes if n.gpus]
    for deployment in PRODUCTION["deployments"]:
        options = deployment["ray_actor_options"]
        fits = [
            n
            for n in (gpu_nodes if options.get("num_gpus") else nodes)
            if options.get("num_gpus", 0) <= n.gpus
            and options.get("num_cpus", 1) <= n.cpus
            # Ray keeps about 30% of a node's memory for its object store
            and options.get("memory", 0) <= 0.7 * n.memory
        ]
        assert fits, f"no node group can hold a {deployment['name']} replica"
    # enough GPUs for every model at its minimum at cluster start, and at its maximum when scaled out
    gpu_slots = {at: sum(n.gpus * getattr(n, f"{at}_nodes") for n in gpu_nodes) for at in ("min", "max")}
    assert gpu_slots["min"] >= gpus_requested(PRODUCTION, "min_replicas")
    assert gpu_slots["max"] >= gpus_requested(PRODUCTION, "max_replicas")
    # whole-GPU replicas cannot be packed fractionally: count them per node
    whole = sum(
        math.ceil(d["ray_actor_options"].get("num_gpus", 0)) * d["autoscaling_config"]["max_replicas"]
        for d in PRODUCTION["deployments"]
        if d["ray_actor_options"].get("num_gpus", 0) >= 1
    )
    assert sum(n.max_nodes * int(n.gpus) for n in gpu_nodes) >= whole
    cpus_at_max = sum(
        d["ray_actor_options"].get("num_cpus", 1) * d["autoscaling_config"]["max_replicas"]
        for d in PRODUCTION["deployments"]
    )
    assert sum(n.cpus * n.max_nodes for n in nodes) >= cpus_at_max


def test_no_secret_is_written_in_the_serve_config_or_the_manifest() -> None:
    """Store URLs are `env:NAME` in serve_config.yaml; the pods read them (and S3 and Redis credentials) from
    Kubernetes Secrets."""
    import re

    serve_config = (ROOT / "serve_config.yaml").read_text()
    manifest = (ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text()
    for text in (serve_config, manifest):
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text)  # no user:password@ anywhere
    app = yaml.safe_load(serve_config)["applications"][0]
    users = {d["name"]: d.get("user_config", {}) for d in app["deployments"]}
    assert users["pipeline"]["catalog_url"].startswith("env:") and users["recommend"]["store_url"].startswith("env:")
    rendered = yaml.safe_load(manifest)
    wanted = {users["pipeline"]["catalog_url"][4:], users["recommend"]["store_url"][4:]}
    for group in rendered["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert wanted <= set(env) and all("secretKeyRef" in env[name]["valueFrom"] for name in wanted)


def test_the_rayservice_enables_gcs_fault_tolerance_with_a_secret_password() -> None:
    rendered = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    options = rendered["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert options["redisAddress"] and "secretKeyRef" in options["redisPassword"]["valueFrom"]


def test_a_fresh_production_install_needs_no_trained_seed() -> None:
    app = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
    recommend = next(d for d in app["deployments"] if d["name"] == "recommend")["user_config"]
    assert recommend["model"] is None


def test_every_pods_serve_port_is_its_c_edge_in_front_of_a_loopback_proxy() -> None:
    """KubeRay's Service and readiness probe use the container port named `serve`: on every pod it is the port of
    the C edge (the `edge` application, on every node with a proxy), and Serve's own proxy is on loopback only."""
    config = yaml.safe_load(MANIFEST["spec"]["serveConfigV2"])
    edge = next(a for a in config["applications"] if a["import_path"] == EDGE_IMPORT_PATH)
    edge_config = EdgeConfig.model_validate(edge["deployments"][0]["user_config"])
    assert config["proxy_location"] == "EveryNode" and edge_config.host == "0.0.0.0"
    assert config["http_options"]["host"] == "127.0.0.1" and config["http_options"]["port"] != edge_config.port
    cluster = MANIFEST["spec"]["rayClusterConfig"]
    for spec in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        ports = {p["name"]: p["containerPort"] for p in spec["template"]["spec"]["containers"][0].get("ports", [])}
        assert ports.get("serve") == edge_config.port, spec.get("groupName", "head")


def test_every_pod_runs_serves_direct_ingress_so_its_edge_fronts_the_ingress_replicas() -> None:
    """Direct ingress is per Ray cluster (read by the controller and by every replica): every pod sets it, and
    the replicas' ports stay on the pod's loopback (``http_options.host``), as Serve's proxy."""
    config = yaml.safe_load(MANIFEST["spec"]["serveConfigV2"])
    assert config["http_options"]["host"] == "127.0.0.1"
    cluster = MANIFEST["spec"]["rayClusterConfig"]
    for spec in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0].get("env", [])}
        assert env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1", spec.get("groupName", "head")
        assert 0 < float(env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) <= 10
