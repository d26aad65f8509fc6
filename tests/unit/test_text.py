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


def test_a_batch_answers_each_request_as_if_it_ran_alone(generator: TextGenerator) -> None:
    """Different prompts, lengths, stops and sampling in one batch: greedy rows match their solo runs."""
    requests = [
        TextRequest(prompt="The lighthouse keeper", max_tokens=12, temperature=0),
        TextRequest(prompt="Rain", max_tokens=4, temperature=0),  # shorter prompt (left-padded), shorter budget
        TextRequest(prompt="Breaking news from the harbour today", max_tokens=8, temperature=0, stop=["e"]),
        TextRequest(prompt="A seeded one", max_tokens=6, temperature=1.0, seed=11),  # own group
        TextRequest(prompt="Sampled", max_tokens=5, temperature=0.9),  # another sampling group
    ]
    solo = [generator.generate(r) for r in requests]
    pieces: dict[int, str] = {}
    done: dict[int, TextResult] = {}
    batch = [generator.prepare(r) for r in requests]
    results = generator.run_batch(
        batch,
        on_piece=lambda row, piece: pieces.__setitem__(row, pieces.get(row, "") + piece),
        on_done=lambda row, result: done.__setitem__(row, result),
    )
    assert [r.completion_tokens <= q.max_tokens for r, q in zip(results, requests, strict=True)] == [True] * 5
    for row in (0, 1, 2, 3):  # greedy rows, and the seeded row, equal their solo runs
        assert results[row].text == solo[row].text, row
        assert results[row].finish_reason == solo[row].finish_reason
    assert done == dict(enumerate(results))  # every row reported once, as it finished
    assert all(pieces.get(row, "") == result.text for row, result in enumerate(results))
    assert "e" not in results[2].text


def test_a_cancelled_row_stops_while_the_rest_of_its_batch_goes_on(generator: TextGenerator) -> None:
    keep = generator.prepare(TextRequest(prompt="Go on", max_tokens=30, min_tokens=30, temperature=0))
    drop = generator.prepare(TextRequest(prompt="Stop me", max_tokens=30, min_tokens=30, temperature=0))

    def on_piece(row: int, piece: str) -> None:
        if row == 1:
            drop.cancel.set()  # as when its client disconnects

    kept, dropped = generator.run_batch([keep, drop], on_piece=on_piece)
    assert kept.completion_tokens == 30
    assert dropped.completion_tokens < 5
