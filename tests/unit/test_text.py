"""Text service on the tiny trained GPT-2, through the real loaders and the continuous-batching engine, without Ray."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import ValidationError

from deployments.errors import ServiceError
from deployments.text import (
    ChoiceDelta,
    StreamStart,
    TextDeployment,
    TextRequest,
    TextResult,
    TextService,
)
from deployments.text.articles import ArticleDelta, ArticleRequest


def generate(text_service: TextService, **fields) -> TextResult:
    return asyncio.run(text_service.generate(text_service.prepare(TextRequest(**fields))))


def stream(text_service: TextService, **fields) -> list:
    async def collect() -> list:
        return [item async for item in text_service.stream(text_service.prepare(TextRequest(**fields)))]

    return asyncio.run(collect())


def test_completion_has_types_and_token_counts(text_service: TextService) -> None:
    result = generate(text_service, prompt="Once upon a time", max_tokens=12, seed=3)
    assert isinstance(result, TextResult) and isinstance(result.text, str)
    assert result.model == "tiny"
    assert result.prompt_tokens == len(text_service.tokenizer("Once upon a time")["input_ids"])
    assert 1 <= result.completion_tokens <= 12
    assert result.finish_reason in ("stop", "length")


def test_the_trained_tiny_model_writes_words(text_service: TextService) -> None:
    result = generate(text_service, prompt="Once upon a time", max_tokens=40, temperature=0)
    words = result.text.split()
    assert len(words) >= 5 and "\ufffd" not in result.text
    assert sum(w.strip(".,").isalpha() for w in words) / len(words) > 0.8


def test_same_seed_same_text_other_seed_other_text(text_service: TextService) -> None:
    request = dict(prompt="The lighthouse", max_tokens=20, temperature=1.0)
    a, b, c = (generate(text_service, **request, seed=s) for s in (7, 7, 8))
    assert a.text == b.text
    assert a.text != c.text


def test_greedy_equals_a_solo_run_of_the_model(text_service: TextService, tiny_models) -> None:
    """The engine's greedy output equals plain ``generate`` on a separate copy of the model (a plain generate
    beside the live batch is not allowed by the library)."""
    import torch
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_models / "text").eval()
    for prompt in ("Breaking news", "The quiet harbour", "Once upon a time, the baker"):
        ids = text_service.tokenizer(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = reference.generate(**ids, max_new_tokens=15, do_sample=False, pad_token_id=0, min_new_tokens=15)
        expected = text_service.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        assert generate(text_service, prompt=prompt, max_tokens=15, min_tokens=15, temperature=0).text == expected


def test_stop_sequence_truncates_and_reports_stop(text_service: TextService) -> None:
    base = generate(text_service, prompt="Recipe", max_tokens=30, temperature=0)
    stop = base.text[6:9]
    cut = generate(text_service, prompt="Recipe", max_tokens=30, temperature=0, stop=[stop])
    assert cut.text == base.text[: base.text.find(stop)]
    assert cut.finish_reason == "stop"


def test_chat_goes_through_the_tokenizers_template(text_service: TextService) -> None:
    request = TextRequest(messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    rendered = text_service.render_prompt(request)
    assert rendered == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"
    result = asyncio.run(text_service.generate(text_service.prepare(request.model_copy(update={"max_tokens": 4}))))
    assert result.prompt_tokens == len(text_service.tokenizer(rendered)["input_ids"])


@pytest.mark.parametrize(
    ("request_fields", "field", "status"),
    [
        ({"prompt": "hi", "max_tokens": 201}, "max_tokens", 400),  # over the config's limit
        ({"prompt": "word " * 300, "max_tokens": 4}, "prompt", 400),  # longer than the context
        ({"prompt": "word " * 70, "max_tokens": 200}, "max_tokens", 400),  # prompt + completion > context
        ({"prompt": "hi", "model": "gpt-4"}, "model", 404),
        ({"prompt": "hi", "n": 9}, "n", 400),
        ({"prompt": "hi", "logit_bias": {99999: 1.0}}, "logit_bias", 400),
        (
            {"prompt": "hi", "response_format": {"type": "json_schema", "json_schema": {"type": "strin"}}},
            "response_format",
            400,
        ),
    ],
)
def test_requests_the_model_cannot_serve_name_the_field(text_service, request_fields, field, status) -> None:
    with pytest.raises(ServiceError) as err:
        text_service.prepare(TextRequest(**request_fields))
    assert err.value.param == field
    assert err.value.status == status


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**6}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "frequency_penalty": 3}, "frequency_penalty"),
        ({"prompt": "x", "surprise": 1}, "surprise"),
    ],
)
def test_schema_rejects_out_of_bounds_fields(fields, field) -> None:
    with pytest.raises(ValidationError) as err:
        TextRequest(**fields)
    assert err.value.errors()[0]["loc"][0] == field


def test_schema_wants_exactly_one_input() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        TextRequest()
    with pytest.raises(ValidationError, match="exactly one"):
        TextRequest(prompt="a", messages=[{"role": "user", "content": "b"}])


def test_min_tokens_keeps_end_of_text_away(text_service: TextService) -> None:
    for seed in range(4):
        assert generate(text_service, prompt="Hi", max_tokens=12, min_tokens=12, seed=seed).completion_tokens == 12


def test_ignore_eos_generates_to_the_limit(text_service: TextService) -> None:
    plain = generate(text_service, prompt="Tell me about tides.", max_tokens=150, temperature=0)
    assert plain.finish_reason == "stop"  # the trained model ends its paragraphs
    longer = generate(text_service, prompt="Tell me about tides.", max_tokens=150, temperature=0, ignore_eos=True)
    assert longer.finish_reason == "length" and longer.completion_tokens == 150


def test_a_vanishing_temperature_means_greedy(text_service: TextService) -> None:
    tiny = generate(text_service, prompt="Hi", max_tokens=6, temperature=1.9e-181, seed=3)
    greedy = generate(text_service, prompt="Hi", max_tokens=6, temperature=0)
    assert tiny.text == greedy.text


def test_streaming_deltas_spell_the_result(text_service: TextService) -> None:
    items = stream(text_service, prompt="Tides", max_tokens=20, seed=4, temperature=1.0)
    assert isinstance(items[0], StreamStart) and isinstance(items[-1], TextResult)
    deltas = [i for i in items if isinstance(i, ChoiceDelta)]
    assert len([d for d in deltas if d.text]) >= 2
    assert "".join(d.text for d in deltas) == items[-1].text
    assert deltas[-1].finish_reason == items[-1].finish_reason


def test_a_stream_read_behind_the_engine_sends_what_is_ready_in_one_message(text_service: TextService) -> None:
    """A consumer that reads on only once the engine has finished (a slow path) gets every token made meanwhile in
    one delta, the choice's finish reason included: fewer, fuller messages, the same text and tokens."""
    fields = {"prompt": "Harbour", "max_tokens": 12, "temperature": 0, "ignore_eos": True, "logprobs": 1}
    expected = generate(text_service, **fields)

    async def read_late() -> list:
        items = text_service.stream(text_service.prepare(TextRequest(**fields)))
        read = [await items.__anext__(), await items.__anext__()]  # the start, then the first delta
        deadline = time.monotonic() + 120
        while text_service.engine.admission.running:  # the engine finishes while nobody reads
            assert time.monotonic() < deadline, "the engine did not finish 12 tokens in 120 s"
            await asyncio.sleep(0.01)
        for _ in range(100):  # the choice's task queues its last delta and the end in a few turns of the loop
            await asyncio.sleep(0)
        return read + [item async for item in items]

    items = asyncio.run(read_late())
    deltas = [i for i in items if isinstance(i, ChoiceDelta)]
    assert isinstance(items[0], StreamStart) and isinstance(items[-1], TextResult) and len(deltas) <= 2
    result = items[-1]
    assert "".join(d.text for d in deltas) == result.text == expected.text
    assert sum(d.tokens for d in deltas) == result.completion_tokens == 12 and deltas[-1].finish_reason == "length"
    assert [e for d in deltas for e in d.logprobs] == result.choices[0].logprobs


def test_stop_sequences_never_leak_into_the_stream(text_service: TextService) -> None:
    base = generate(text_service, prompt="Recipe", max_tokens=30, temperature=0)
    stop = base.text[8:11]
    items = stream(text_service, prompt="Recipe", max_tokens=30, temperature=0, stop=[stop])
    text = "".join(i.text for i in items if isinstance(i, ChoiceDelta))
    assert text == items[-1].text == base.text[: base.text.find(stop)]
    assert stop not in text


def test_streams_never_emit_half_a_character(text_service: TextService) -> None:
    """Characters outside the corpus span several byte tokens; the grammar forces them out one byte at a time."""
    phrase = "naïve café 🎉 ünïcödé"
    pieces = [len(text_service.tokenizer(ch, add_special_tokens=False)["input_ids"]) for ch in "é🎉"]
    assert pieces == [2, 4]
    schema = {"type": "string", "enum": [phrase]}
    items = stream(
        text_service,
        prompt="Say it",
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": schema},
    )
    deltas = [i.text for i in items if isinstance(i, ChoiceDelta) and i.text]
    assert all("\ufffd" not in d for d in deltas)
    assert json.loads("".join(deltas)) == phrase


def test_n_choices_are_independent_and_numbered(text_service: TextService) -> None:
    result = generate(text_service, prompt="Once upon a time", max_tokens=20, temperature=1.0, n=4, seed=11)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert len({c.text for c in result.choices}) == 4
    assert result.completion_tokens == sum(c.completion_tokens for c in result.choices)
    again = generate(text_service, prompt="Once upon a time", max_tokens=20, temperature=1.0, n=4, seed=11)
    assert [c.text for c in again.choices] == [c.text for c in result.choices]  # seeded per choice


def test_best_of_returns_the_likeliest_candidates(text_service: TextService) -> None:
    result = generate(
        text_service, prompt="The baker", max_tokens=10, temperature=1.2, n=2, best_of=6, seed=1, logprobs=0
    )
    totals = [sum(t.logprob for t in c.logprobs) for c in result.choices]
    assert len(result.choices) == 2 and totals == sorted(totals, reverse=True)
    every = generate(text_service, prompt="The baker", max_tokens=10, temperature=1.2, n=6, seed=1, logprobs=0)
    best = sorted((sum(t.logprob for t in c.logprobs) for c in every.choices), reverse=True)[:2]
    assert totals == pytest.approx(best)


def test_logprobs_with_alternatives(text_service: TextService) -> None:
    result = generate(text_service, prompt="The quiet", max_tokens=6, temperature=0, logprobs=3)
    entries = result.choices[0].logprobs
    assert len(entries) == result.choices[0].completion_tokens - (result.finish_reason == "stop")
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top) == 3
        assert entry.token_id == entry.top[0].token_id  # greedy: the chosen token is the likeliest
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    assert "".join(e.token for e in entries) == result.text


def test_echo_returns_the_prompt_with_its_logprobs(text_service: TextService) -> None:
    result = generate(text_service, prompt="The quiet harbour", max_tokens=3, temperature=0, echo=True, logprobs=2)
    assert result.prompt_text == "The quiet harbour"
    prompt = result.prompt_logprobs
    assert prompt[0].logprob is None and prompt[0].token == "The" and len(prompt) == result.prompt_tokens
    assert all(p.logprob <= 0 and len(p.top) == 2 for p in prompt[1:])


def test_a_banned_token_never_appears_and_a_favoured_one_always_does(text_service: TextService) -> None:
    the = text_service.tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert len(the) == 1
    base = generate(text_service, prompt="Once upon a time", max_tokens=60, temperature=0.8, seed=2)
    assert " the" in base.text
    banned = generate(
        text_service, prompt="Once upon a time", max_tokens=60, temperature=0.8, seed=2, logit_bias={the[0]: -100}
    )
    assert " the " not in banned.text and not banned.text.startswith(" the")
    forced = generate(
        text_service, prompt="Once upon a time", max_tokens=5, temperature=0.8, seed=2, logit_bias={the[0]: 100}
    )
    assert forced.text == " the" * 5


def test_penalties_push_away_from_repetition(text_service: TextService) -> None:
    def distinct_share(**penalty) -> float:
        tokens = generate(text_service, prompt="The", max_tokens=80, temperature=0, logprobs=0, **penalty)
        ids = [t.token_id for t in tokens.choices[0].logprobs]
        return len(set(ids)) / len(ids)

    plain = distinct_share()
    assert distinct_share(frequency_penalty=2.0) > plain
    assert distinct_share(presence_penalty=2.0) > plain
    assert distinct_share(repetition_penalty=3.0) > plain


def test_min_p_and_top_k_narrow_sampling(text_service: TextService) -> None:
    wide = {generate(text_service, prompt="The", max_tokens=3, temperature=2.0, seed=s).text for s in range(12)}
    top1 = {
        generate(text_service, prompt="The", max_tokens=3, temperature=2.0, seed=s, top_k=1).text for s in range(12)
    }
    strict = {
        generate(text_service, prompt="The", max_tokens=3, temperature=2.0, seed=s, min_p=1.0).text for s in range(12)
    }
    assert len(top1) == 1 and len(strict) == 1 and len(wide) > 3


PERSON = {  # a schema as a client's pydantic model gives it: strings without bounds, an integer, other keys not
    "type": "object",  # forbidden (the engine does not invent them: it closes objects the schema leaves open)
    "properties": {"name": {"type": "string"}, "city": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "city", "age"],
}


def local_default_budget() -> int:
    """`default_max_tokens` of the local profile's text text_service: the budget a client that sends none gets."""
    import yaml

    from app.deploy import LOCAL, app_of, deployments_of

    return deployments_of(app_of(yaml.safe_load(LOCAL.read_text())))["text"]["user_config"]["default_max_tokens"]


def test_the_offline_model_closes_json_by_itself_within_the_default_budget(text_service: TextService) -> None:
    """What a person trying structured output on the local profile gets: an object that parses, ended by the
    model itself (``stop``), not steered to a close at the budget (``length``). The tiny model learned to write
    short JSON values (offline/corpus.py); greedy, and sampled over seeds."""
    import jsonschema

    asks = ["Tell me about someone by the sea.", "Extract: Ann lives in a quiet village.", "Who keeps the tower?"]
    for n, ask in enumerate(asks * 4):
        temperature = 0.0 if n < len(asks) else 0.7
        result = generate(
            text_service,
            messages=[{"role": "user", "content": ask}],
            temperature=temperature,
            seed=n,
            max_tokens=local_default_budget(),
            response_format={"type": "json_schema", "json_schema": PERSON},
        )
        choice = result.choices[0]
        assert choice.finish_reason == "stop", (ask, temperature, choice.text)
        jsonschema.validate(json.loads(choice.text), PERSON)


def test_regex_choice_and_grammar_constrain_the_output(text_service: TextService) -> None:
    year = generate(
        text_service, prompt="The year", max_tokens=10, response_format={"type": "regex", "regex": "[0-9]{4}"}
    )
    assert len(year.choices[0].text) == 4 and year.choices[0].text.isdigit()
    assert year.choices[0].finish_reason == "stop"
    picked = generate(
        text_service,
        prompt="Pick:",
        max_tokens=10,
        response_format={"type": "choice", "choices": ["sea", "hill", "town"]},
    )
    assert picked.choices[0].text in ("sea", "hill", "town") and picked.choices[0].finish_reason == "stop"
    grammar = 'start: "yes" | "no" " thanks"'
    said = generate(
        text_service, prompt="Well?", max_tokens=10, response_format={"type": "grammar", "grammar": grammar}
    )
    assert said.choices[0].text in ("yes", "no thanks")


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        ({"type": "regex", "regex": "("}, "response_format"),
        ({"type": "grammar", "grammar": "start: missing"}, "response_format"),
    ],
)
def test_a_constraint_the_engine_cannot_use_is_a_400(text_service: TextService, fmt: dict, field: str) -> None:
    with pytest.raises(ServiceError) as err:
        text_service.prepare(TextRequest(prompt="x", response_format=fmt))
    assert (err.value.param, err.value.status) == (field, 400)


def test_json_schema_output_always_validates(text_service: TextService) -> None:
    """200 seeds, sampled hot, under a schema with nested objects, enums, bounds and arrays: every answer
    parses and validates, even those that ran out of tokens (the engine steers them to a valid end)."""
    import jsonschema

    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 40},
            "mood": {"enum": ["calm", "busy", "quiet"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 99},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
            "place": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        },
        "required": ["title", "mood", "count", "tags", "place"],
        "additionalProperties": False,
    }
    request = TextRequest(
        messages=[{"role": "user", "content": "Describe a harbour as JSON."}],
        max_tokens=64,
        temperature=1.3,
        response_format={"type": "json_schema", "json_schema": schema},
    )

    async def run_all() -> list[TextResult]:
        room = asyncio.Semaphore(64)  # within the engine's running + waiting places

        async def one(seed: int) -> TextResult:
            async with room:
                return await text_service.generate(text_service.prepare(request.model_copy(update={"seed": seed})))

        return await asyncio.gather(*(one(s) for s in range(200)))

    results = asyncio.run(run_all())
    for result in results:
        jsonschema.validate(json.loads(result.text), schema)


def test_structured_output_that_runs_out_of_tokens_still_parses(text_service: TextService) -> None:
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    for seed in range(5):
        result = generate(
            text_service,
            prompt="A story:",
            max_tokens=30,
            temperature=1.0,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": schema},
        )
        assert isinstance(json.loads(result.text)["story"], str)
        assert result.completion_tokens <= 30


def test_json_object_mode_answers_an_object(text_service: TextService) -> None:
    result = generate(
        text_service,
        prompt="An object:",
        max_tokens=40,
        temperature=0.9,
        seed=1,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(result.text), dict)


def test_a_named_tool_gets_arguments_under_its_schema(text_service: TextService) -> None:
    tool = {
        "name": "book_trip",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "nights": {"type": "integer", "maximum": 9}},
            "required": ["city", "nights"],
            "additionalProperties": False,
        },
    }
    result = generate(
        text_service,
        messages=[{"role": "user", "content": "Book it"}],
        tools=[tool],
        tool_choice="book_trip",
        max_tokens=80,
        temperature=0.8,
        seed=3,
    )
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.text == ""
    (call,) = choice.tool_calls
    arguments = json.loads(call.function.arguments)
    assert call.function.name == "book_trip" and set(arguments) == {"city", "nights"}
    required = generate(
        text_service,
        messages=[{"role": "user", "content": "Book it"}],
        tools=[tool],
        tool_choice="required",
        max_tokens=80,
        temperature=0.8,
        seed=3,
    )
    assert required.choices[0].tool_calls[0].function.name == "book_trip"


def test_tool_choice_auto_without_a_tool_template_is_refused(text_service: TextService) -> None:
    tool = {"name": "noop", "parameters": {"type": "object"}}
    with pytest.raises(ServiceError) as err:
        text_service.prepare(TextRequest(messages=[{"role": "user", "content": "x"}], tools=[tool]))
    assert err.value.param == "tool_choice"
    with pytest.raises(ServiceError) as err:
        text_service.prepare(
            TextRequest(messages=[{"role": "user", "content": "x"}], tools=[tool], tool_choice="other")
        )
    assert err.value.param == "tool_choice"


def test_articles_are_json_with_a_title_and_a_body(text_service: TextService) -> None:
    for seed in range(20):
        article = asyncio.run(text_service.write_article(ArticleRequest(topic="tides", seed=seed)))
        assert article.title and article.body
        assert "\ufffd" not in article.title + article.body
        assert len(article.body.split()) >= 3


def test_a_streamed_article_hands_out_title_and_body_text(text_service: TextService) -> None:
    async def collect() -> list:
        return [item async for item in text_service.write_article_stream(ArticleRequest(topic="owls", seed=5))]

    items = asyncio.run(collect())
    article = items[-1]
    deltas = [i for i in items if isinstance(i, ArticleDelta)]
    assert "".join(d.text for d in deltas if d.field == "title").strip() == article.title
    assert "".join(d.text for d in deltas if d.field == "body").strip() == article.body
    assert deltas[0].field == "title" and deltas[-1].field == "body"


def test_tokenize_and_detokenize_round_trip(text_service: TextService) -> None:
    tokens = text_service.tokenize(TextRequest(prompt="The quiet harbour"), return_token_strs=True)
    assert tokens.count == len(tokens.tokens) and "".join(tokens.token_strs) == "The quiet harbour"
    assert text_service.detokenize(tokens.tokens) == "The quiet harbour"
    with pytest.raises(ServiceError) as err:
        text_service.detokenize([10**6])
    assert err.value.param == "tokens"


def test_health_checks_run_through_the_engine(text_service: TextService) -> None:
    before = text_service.engine.describe()["steps"]
    asyncio.run(text_service.check_health())
    assert text_service.engine.describe()["steps"] > before


def test_reconfigure_in_place_restart_the_engine_or_reload(tiny_models) -> None:
    replica = TextDeployment.func_or_class()
    base = {"model": str(tiny_models / "text"), "default_max_tokens": 5}

    async def scenario() -> None:
        await replica.reconfigure(base)
        model = replica.model
        result = await model.generate(model.prepare(TextRequest(prompt="a", temperature=0, ignore_eos=True)))
        assert result.completion_tokens == 5

        await replica.reconfigure({**base, "default_max_tokens": 3})
        assert replica.model is model and model.engine is not None  # same weights, same engine, new defaults
        result = await model.generate(model.prepare(TextRequest(prompt="a", temperature=0, ignore_eos=True)))
        assert result.completion_tokens == 3

        engine = model.engine
        await replica.reconfigure({**base, "engine": {"kv_cache": {"num_blocks": 64, "page_size": 16}}})
        assert replica.model is model and model.engine is not engine  # the KV cache resized: engine restarted
        assert (await replica.describe())["kv_cache"]["capacity_tokens"] == 1024
        assert (await replica.describe())["reloads"] == 0

        await replica.reconfigure({**base, "dtype": "bfloat16"})
        assert replica.model is not model  # a load-time field changed: a new model was swapped in
        description = await replica.describe()
        assert description["dtype"] == "bfloat16" and description["reloads"] == 1
        replica.model.close()

    asyncio.run(scenario())


def test_the_prompts_of_one_request_share_their_engine_group(text_service: TextService) -> None:
    """A completion's prompts (one ``generate_many`` call, or streams the ingress marked with one ``group``) wait
    in the engine as one request; a request alone waits as itself."""
    alone = text_service.prepare(TextRequest(prompt="a"))
    assert alone.group is None  # its own group: its request id (see ``_run``)
    marked = text_service.prepare(TextRequest(prompt="a", group="g-1"))
    assert marked.group == "g-1"
    prepared = [text_service.prepare(TextRequest(prompt=p, max_tokens=2, temperature=0)) for p in ("a", "b", "c")]
    results = asyncio.run(text_service.generate_many(prepared))
    assert len(results) == 3 and len({p.group for p in prepared}) == 1 and prepared[0].group


def test_the_grammar_bitmask_keeps_exactly_the_allowed_tokens() -> None:
    """Our eager bitmask (llguidance's kernel is torch.compile'd: a first-request stall) against the definition:
    token ``t`` is allowed when bit ``t % 32`` of word ``t // 32`` is set; tokens past the mask never are."""
    import torch

    from deployments.text.sampling import apply_bitmask

    generator = torch.Generator().manual_seed(0)
    for vocab, words in ((31, 1), (64, 2), (517, 17), (100, 2)):
        mask = torch.randint(-(2**31), 2**31 - 1, (words,), dtype=torch.int32, generator=generator)
        scores = torch.randn(vocab, generator=generator)
        expected = [t < 32 * words and (int(mask[t // 32]) >> (t % 32)) & 1 == 1 for t in range(vocab)]
        before = scores.clone()
        apply_bitmask(scores, mask)
        assert [bool(torch.isfinite(v)) for v in scores] == expected
        assert torch.equal(scores[torch.tensor(expected)], before[torch.tensor(expected)])
