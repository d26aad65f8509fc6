"""Fixtures shared by every test tier: offline mode and the tiny models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throw-away project root holding this session's tiny models and data (``$CONTENT_STUDIO_ROOT``)."""
    from scripts.build_tiny_models import ensure_tiny_models

    root = tmp_path_factory.mktemp("content-studio-root")
    ensure_tiny_models(root / ".cache" / "models" / "tiny")
    return root


@pytest.fixture(scope="session")
def tiny_models(project_root: Path) -> Path:
    """The folder with the tiny ``text``, ``image``, ``voice`` and ``recommend`` models."""
    return project_root / ".cache" / "models" / "tiny"
