"""Text service on the tiny GPT-2 through the real transformers loaders, without Ray."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from deployments.common import RequestError
from deployments.text import TextConfig, TextDeployment, TextGenerator, TextRequest, TextResult


@pytest.fixture(scope="module")
def generator(tiny_models) -> TextGenerator:
    return TextGenerator(TextConfig(model=str(tiny_models / "text"), served_model_name="tiny", max_tokens_limit=64))


def test_completion_has_types_and_token_counts(generator: TextGenerator) -> None:
    result = generator.generate(TextRequest(prompt="Once upon a time", max_tokens=12, seed=3))
    assert isinstance(result, TextResult)
    assert isinstance(result.text, str)
    assert result.model == "tiny"
    assert result.prompt_tokens == len(generator.tokenizer("Once upon a time")["input_ids"])
    assert 1 <= result.completion_tokens <= 12
    assert result.finish_reason in ("stop", "length")


def test_same_seed_same_text_other_seed_other_text(generator: TextGenerator) -> None:
    request = dict(prompt="The lighthouse", max_tokens=20, temperature=1.0)
    a = generator.generate(TextRequest(**request, seed=7))
    b = generator.generate(TextRequest(**request, seed=7))
    c = generator.generate(TextRequest(**request, seed=8))
    assert a.text == b.text
    assert a.text != c.text


def test_greedy_is_deterministic_without_seed(generator: TextGenerator) -> None:
    first = generator.generate(TextRequest(prompt="Breaking news", max_tokens=10, temperature=0))
    second = generator.generate(TextRequest(prompt="Breaking news", max_tokens=10, temperature=0))
    assert first == second
    assert first.finish_reason == "length" and first.completion_tokens == 10


def test_stop_sequence_truncates_and_reports_stop(generator: TextGenerator) -> None:
    base = generator.generate(TextRequest(prompt="Recipe", max_tokens=30, temperature=0))
    assert len(base.text) > 6
    stop = base.text[4:6]
    cut = generator.generate(TextRequest(prompt="Recipe", max_tokens=30, temperature=0, stop=[stop]))
    assert cut.text == base.text[: base.text.find(stop)]
    assert cut.finish_reason == "stop"


def test_chat_goes_through_the_tokenizers_template(generator: TextGenerator) -> None:
    request = TextRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    rendered = generator.render_prompt(request)
    assert rendered == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"
    result = generator.generate(request.model_copy(update={"max_tokens": 4}))
    assert result.prompt_tokens == len(generator.tokenizer(rendered)["input_ids"])


def test_chat_without_template_falls_back_to_role_lines(tiny_models) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models / "text")
    tokenizer.chat_template = None
    model = AutoModelForCausalLM.from_pretrained(tiny_models / "text")
    generator = TextGenerator(TextConfig(model="injected"), model=model, tokenizer=tokenizer)
    request = TextRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert generator.render_prompt(request) == "user: Hi\nassistant:"
    assert generator.generate(request).completion_tokens >= 1


@pytest.mark.parametrize(
    ("request_fields", "field", "status"),
    [
        ({"prompt": "hi", "max_tokens": 65}, "max_tokens", 400),  # over the config's limit
        ({"prompt": "word " * 300, "max_tokens": 4}, "prompt", 400),  # longer than the context
        ({"prompt": "word " * 70, "max_tokens": 64}, "max_tokens", 400),  # prompt + completion > context
        ({"prompt": "hi", "model": "gpt-4"}, "model", 404),
    ],
)
def test_requests_the_model_cannot_serve_name_the_field(generator, request_fields, field, status) -> None:
    with pytest.raises(RequestError) as err:
        generator.generate(TextRequest(**request_fields))
    assert err.value.field == field
    assert err.value.status_code == status


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "surprise": 1}, "surprise"),
    ],
)
def test_schema_rejects_out_of_bounds_fields(fields, field) -> None:
    with pytest.raises(ValidationError) as err:
        TextRequest(**fields)
    assert err.value.errors()[0]["loc"][0] == field


def test_schema_wants_exactly_one_of_prompt_and_messages() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        TextRequest()
    with pytest.raises(ValidationError, match="exactly one"):
        TextRequest(prompt="a", messages=[{"role": "user", "content": "b"}])


def test_config_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="max_tokenz"):
        TextConfig(model="x", max_tokenz=3)


def test_reconfigure_applies_defaults_in_place_and_reloads_for_a_new_model(tiny_models) -> None:
    replica = TextDeployment.func_or_class()
    base = {"model": str(tiny_models / "text"), "default_max_tokens": 5}
    asyncio.run(replica.reconfigure(base))
    engine = replica.engine
    assert engine.generate(TextRequest(prompt="a", temperature=0)).completion_tokens == 5

    asyncio.run(replica.reconfigure({**base, "default_max_tokens": 3}))
    assert replica.engine is engine  # same weights, new defaults
    assert engine.generate(TextRequest(prompt="a", temperature=0)).completion_tokens == 3

    asyncio.run(replica.reconfigure({**base, "dtype": "bfloat16"}))
    assert replica.engine is not engine  # a load-time field changed: a new engine was swapped in
    assert asyncio.run(replica.describe())["dtype"] == "bfloat16"
    assert asyncio.run(replica.describe())["reloads"] == 1


def test_min_tokens_keeps_end_of_text_away(generator: TextGenerator) -> None:
    for seed in range(5):
        result = generator.generate(TextRequest(prompt="Hi", max_tokens=12, min_tokens=12, seed=seed))
        assert result.completion_tokens == 12


def test_a_vanishing_temperature_means_greedy(generator: TextGenerator) -> None:
    # Found by the schemathesis run: temperature 1.9e-181 overflowed the softmax.
    tiny = generator.generate(TextRequest(prompt="Hi", max_tokens=6, temperature=1.9e-181, seed=3))
    greedy = generator.generate(TextRequest(prompt="Hi", max_tokens=6, temperature=0))
    assert tiny.text == greedy.text


def test_streaming_emits_deltas_that_spell_the_result(generator: TextGenerator) -> None:
    pieces: list[str] = []
    result = generator.generate(TextRequest(prompt="Tides", max_tokens=20, seed=4, temperature=1.0), pieces.append)
    assert len(pieces) >= 2 and "".join(pieces) == result.text


def test_stop_sequences_never_leak_into_the_stream(generator: TextGenerator) -> None:
    base = generator.generate(TextRequest(prompt="Recipe", max_tokens=30, temperature=0))
    stop = base.text[8:10]
    pieces: list[str] = []
    cut = generator.generate(TextRequest(prompt="Recipe", max_tokens=30, temperature=0, stop=[stop]), pieces.append)
    assert "".join(pieces) == cut.text and stop not in cut.text


def test_cancel_stops_generation_early(generator: TextGenerator) -> None:
    import threading

    cancel = threading.Event()
    result = generator.generate(
        TextRequest(prompt="Long story", max_tokens=60, min_tokens=60, seed=1), lambda _: cancel.set(), cancel
    )
    assert result.completion_tokens < 10  # a client that goes away stops the model, not only the stream
