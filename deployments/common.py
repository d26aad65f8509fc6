"""Pieces every model service shares: strict configs, model sources, device placement (errors: errors.py).

Nothing here imports torch or Ray at module import time: a service module must import without either running.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from deployments.errors import NotFound

logger = logging.getLogger("content_studio")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ROOT_ENV = "CONTENT_STUDIO_ROOT"

SEED_MAX = 2**53 - 1  # the largest integer JSON carries exactly (a float64 mantissa)
DevicePreference = Literal["auto", "cpu", "cuda"]
DTypeName = Literal["auto", "float32", "float16", "bfloat16"]


def _json_kind(annotation: Any) -> Any:
    """What JSON type a field takes, when it is a number or a boolean (or a list or map of them)."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _json_kind(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _json_kind(members[0]) if len(members) == 1 else None
    if origin is list:
        inner = _json_kind(typing.get_args(annotation)[0])
        return ("list", inner) if inner else None
    if origin is dict:
        inner = _json_kind(typing.get_args(annotation)[1])
        return ("dict", inner) if inner else None
    if annotation is bool:
        return "bool"
    if annotation in (int, float):
        return "number"
    return None


def _json_type_error(kind: Any, value: Any) -> str | None:
    """Why ``value`` is not what JSON calls a number (or a boolean), or None when it is."""
    if value is None or kind is None:
        return None
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "number":
        return "must be a number, not a string or a boolean" if isinstance(value, str | bytes | bool) else None
    items = value if kind[0] == "list" and isinstance(value, list) else []
    if kind[0] == "dict" and isinstance(value, dict):
        items = list(value.values())
    return next((e for e in (_json_type_error(kind[1], item) for item in items) if e), None)


class JsonTyped:
    """Mixin for pydantic models whose numbers and booleans come from JSON and must be typed as JSON types them:
    pydantic's lax mode would take the string "5" for 5 (or "yes" for true), its strict mode would refuse 1.0 for
    the integer 1 (which JSON Schema allows). Bounds stay pydantic's, so the JSON schema keeps them."""

    @model_validator(mode="before")
    @classmethod
    def _json_types(cls, data: Any) -> Any:
        from pydantic import ValidationError
        from pydantic_core import InitErrorDetails, PydanticCustomError

        if not isinstance(data, dict):
            return data
        kinds = cls.__dict__.get("_json_kinds")
        if kinds is None:
            fields = cls.model_fields  # type: ignore[attr-defined]
            kinds = {(f.alias or name): k for name, f in fields.items() if (k := _json_kind(f.annotation))}
            cls._json_kinds = kinds  # type: ignore[attr-defined]
        errors = [
            InitErrorDetails(type=PydanticCustomError("json_type", message), loc=(key,), input=data[key])
            for key, kind in kinds.items()
            if key in data and (message := _json_type_error(kind, data[key]))
        ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


class StrictModel(JsonTyped, BaseModel):
    """Base for configs and schemas: unknown fields are errors, so a typo in YAML or JSON is caught early."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FaultInjection(StrictModel):
    """Deliberate failures, for resilience tests and game days (like a service mesh's fault injection).

    Off by default. ``error_rate``, ``delay_s``, ``stream_delay_s`` and ``fail_after`` apply to requests only,
    not to health checks, so a faulty replica stays in service; ``fail_health_checks`` makes the replica look
    sick to Serve instead.
    """

    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="Share of requests that fail with InjectedFault.")
    delay_s: float = Field(0.0, ge=0.0, le=600.0, description="Added latency before every request.")
    stream_delay_s: float = Field(
        0.0,
        ge=0.0,
        le=10.0,
        description="Added latency after each item of a streamed answer (a slower model); in the text service a "
        "token's pace: the k-th no sooner than k times this after the first.",
    )
    fail_health_checks: bool = Field(False, description="Health checks fail, so Serve replaces the replica.")
    fail_after: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        description="Requests after the first this many (counted by each replica from the moment this config "
        "was applied) fail with InjectedFault: a service that breaks half-way, reproducibly.",
    )


class InjectedFault(RuntimeError):
    """A failure asked for by ``faults`` in the service config. It stands for an unexpected failure (a crash, a
    bug), so it is deliberately not a ``ServiceError``: it is answered as such failures are (500, naming it)."""


class ServiceConfig(StrictModel):
    """Fields every model service's config has; each service adds its own."""

    model: str = Field(
        description="Model source: a Hugging Face hub id, a Coqui model name, or a local folder. Relative "
        "folders resolve against $CONTENT_STUDIO_ROOT (default: the project root).",
        min_length=1,
    )
    served_model_name: str | None = Field(
        None, description="Name clients use in the `model` field and see in /v1/models; defaults to `model`."
    )
    device: DevicePreference = Field(
        "auto", description="`auto`: CUDA when Ray gave this replica a GPU and CUDA works, else CPU."
    )
    dtype: DTypeName = Field(
        "auto", description="Weights dtype. `auto`: float16 on CUDA, float32 on CPU (half precision on CPU is slow)."
    )
    faults: FaultInjection = Field(
        default_factory=FaultInjection, description="Fault injection for resilience testing; off by default."
    )

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    def check_model(self, requested: str | None) -> None:
        """A request may name the model it wants; naming another one is a 404, as with OpenAI."""
        if requested is not None and requested not in (self.name, self.model):
            raise NotFound.for_field(
                "model", f"model {requested!r} is not served here; this service serves {self.name!r}"
            )


class Narrative(StrictModel):
    """A titled text: what the text service writes and the image and voice services turn into media."""

    title: str = Field(max_length=500)
    body: str = Field(min_length=1, max_length=100_000)


def project_root() -> Path:
    """Where relative model folders, databases and asset folders live: $CONTENT_STUDIO_ROOT or the checkout."""
    return Path(os.environ.get(ROOT_ENV, PROJECT_ROOT))


def project_path(path: str | Path) -> Path:
    """A path as given when absolute (``~`` expanded), else under the project root."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else project_root() / candidate


def resolve_model_source(source: str) -> str:
    """Return a local folder for ``source`` when one exists, else ``source`` unchanged (a hub id or model name).

    A source written as a path (absolute, ``./``, ``../``, ``~``, or a hidden folder) must exist: a missing local
    model is a configuration error, not something to look up on a hub.
    """
    root = project_root()
    expanded = Path(source).expanduser()
    candidate = expanded if expanded.is_absolute() else root / expanded
    if candidate.exists():
        return str(candidate)
    looks_like_path = source.startswith(("/", "./", "../", "~", ".")) or source.endswith((".pth", ".json"))
    if looks_like_path:
        raise FileNotFoundError(
            f"model folder {candidate} does not exist; build the tiny models with "
            f"`python -m scripts.build_tiny_models` or point `model` at a real model"
        )
    return source


@dataclass
class Placement:
    """Where a replica runs, as Ray assigned it; reported in /v1/health."""

    device: str
    gpu_ids: list[str] = field(default_factory=list)
    cuda_visible_devices: str | None = None
    num_cpus: float | None = None
    torch_threads: int | None = None
    node_id: str | None = None
    replica: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ray_context() -> tuple[list[str], dict[str, float], str | None, str | None]:
    """GPU ids, assigned resources, node id and replica id when running inside a Ray worker."""
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency, but the plain classes do not need it
        return [], {}, None, None
    if not ray.is_initialized():
        return [], {}, None, None
    ctx = ray.get_runtime_context()
    try:
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        resources = dict(ctx.get_assigned_resources() or {})
    except AssertionError:  # a driver (a script or a test that started Ray), not a worker: nothing assigned
        return [], {}, None, None
    replica = None
    try:
        from ray import serve

        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # not inside a Serve replica
        replica = None
    return gpu_ids, resources, ctx.get_node_id(), replica


def resolve_placement(preference: DevicePreference = "auto") -> Placement:
    """Pick the torch device from what Ray assigned, and size torch's thread pool to the replica's CPU share.
    A CPU-only service without torch (the recommender) does not import it: that alone took seconds of a
    replacement replica's start."""
    if preference == "cpu" and "torch" not in sys.modules:
        gpu_ids, resources, node_id, replica = _ray_context()
        return Placement(
            device="cpu",
            gpu_ids=gpu_ids,
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            num_cpus=resources.get("CPU"),
            node_id=node_id,
            replica=replica,
        )
    import torch

    gpu_ids, resources, node_id, replica = _ray_context()
    cuda_ok = torch.cuda.is_available()
    if preference == "cuda" and not cuda_ok:
        raise RuntimeError("device is 'cuda' but CUDA is not available on this replica")
    in_ray = node_id is not None
    # Inside Ray, a replica uses CUDA only when Ray gave it GPUs; outside Ray (tests, scripts) any visible GPU.
    use_cuda = preference == "cuda" or (preference == "auto" and cuda_ok and (bool(gpu_ids) or not in_ray))
    num_cpus = resources.get("CPU")
    threads = None
    if num_cpus is not None:
        threads = max(1, int(num_cpus))
        torch.set_num_threads(threads)
    return Placement(
        device="cuda" if use_cuda else "cpu",
        gpu_ids=gpu_ids,
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
        num_cpus=num_cpus,
        torch_threads=torch.get_num_threads() if threads is None else threads,
        node_id=node_id,
        replica=replica,
    )


def resolve_dtype(name: DTypeName, device: str):
    """Map a dtype name to torch; half precision is only used on CUDA."""
    import torch

    if name == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    dtype = getattr(torch, name)
    if device == "cpu" and dtype == torch.float16:
        logger.warning("float16 requested on CPU; using float32")
        return torch.float32
    return dtype


def memory_bytes(device: str) -> int | None:
    """GPU memory held by torch on this replica (None on CPU)."""
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.memory_allocated())
