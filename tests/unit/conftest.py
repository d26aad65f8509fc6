"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deployments.text import TextConfig, TextService


@pytest.fixture(scope="module")
def text_service(tiny_models) -> Iterator[TextService]:
    """The tiny trained GPT-2 behind the real continuous-batching engine (200 tokens at most a request), one per
    test module; its engine's thread is stopped after the module."""
    service = TextService(TextConfig(model=str(tiny_models / "text"), served_model_name="tiny", max_tokens_limit=200))
    yield service
    service.engine.close(wait=True)
