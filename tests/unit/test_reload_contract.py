"""One contract for every service's replica (as diffusers' mixins test every pipeline alike): a config change in
a field of ``reload_fields`` loads a new model and swaps it in; any other change is applied to the loaded model in
place. Models are injected fakes: this tests the replica's wiring, each service's own tests cover its model."""

from __future__ import annotations

import asyncio
import types
import typing
from typing import Any

import pytest

from deployments.image import ImageDeployment
from deployments.recommend import RecommendDeployment
from deployments.text import TextDeployment
from deployments.voice import VoiceDeployment

# A field each service applies in place, with a valid new value.
IN_PLACE = {
    "text": ("default_max_tokens", 7),
    "image": ("default_steps", 3),
    "voice": ("max_input_chars", 321),
    "recommend": ("content_weight", 0.25),
}
DEPLOYMENTS = [TextDeployment, ImageDeployment, VoiceDeployment, RecommendDeployment]


class FakeModel:
    def __init__(self, config: Any) -> None:
        self.config, self.applied, self.closed = config, [], False
        self.placement = None

    def apply_config(self, config: Any) -> None:
        self.applied.append(config)
        self.config = config

    def warm(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def another_value(annotation: Any, current: Any) -> Any:
    """A valid value of the field's type that differs from ``current``."""
    options = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return next(o for o in options if o != current)
    if annotation is bool:
        return not current
    if annotation is str or str in options or isinstance(annotation, types.UnionType):
        return f"{current or 'x'}-changed"
    raise AssertionError(f"no value for {annotation}")


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d.func_or_class.service)
def test_a_reload_field_loads_a_new_model_and_any_other_field_applies_in_place(deployment) -> None:
    cls = deployment.func_or_class
    loads: list[Any] = []

    class Replica(cls):  # type: ignore[misc, valid-type]
        def load_model(self, config: Any) -> FakeModel:
            loads.append(config)
            return FakeModel(config)

    replica = Replica()
    base = {"model": "some/model"}
    field, value = IN_PLACE[cls.service]
    assert field not in cls.reload_fields and field in cls.config_cls.model_fields

    async def scenario() -> None:
        await replica.reconfigure(base)
        first = replica.model
        assert len(loads) == 1
        await replica.reconfigure({**base, field: value})
        assert replica.model is first and len(loads) == 1  # applied to the loaded model, no reload
        assert getattr(first.config, field) == value and first.applied
        current = replica.model.config.model_dump()
        for name in sorted(cls.reload_fields):
            annotation = cls.config_cls.model_fields[name].annotation
            changed = {**current, name: another_value(annotation, current[name])}
            before = replica.model
            await replica.reconfigure(changed)
            assert replica.model is not before, f"{cls.service}: a change of {name} must load a new model"
            current = replica.model.config.model_dump()
        assert len(loads) == 1 + len(cls.reload_fields)

    asyncio.run(scenario())
