"""The OpenAI surface through clients nobody here wrote: the official ``openai`` client (sync, async, streaming)
with every sampling field, log probabilities, structured output and tools; the probe routes; LangChain."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

MODEL = "tiny-gpt2"
IGNORED = {
    "service_tier": "auto",
    "store": False,
    "metadata": {"team": "a"},
    "user": "u-9",
    "parallel_tool_calls": True,
}


@pytest.fixture(scope="module")
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def token_id(oai: openai.OpenAI, base_url: str, text: str) -> int:
    (tid,) = httpx.post(f"{base_url}/tokenize", json={"model": MODEL, "prompt": text}).json()["tokens"]
    return tid


def test_completions_take_the_whole_sampling_surface(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(
        model=MODEL,
        prompt="The harbour at night",
        max_tokens=12,
        temperature=0.9,
        top_p=0.95,
        frequency_penalty=0.5,
        presence_penalty=0.3,
        logit_bias={},
        seed=4,
        stop=["\n\n", "###"],
        n=2,
        best_of=3,
        user="u-1",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2, "ignore_eos": False},
    )
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert completion.usage.completion_tokens <= 3 * 12


def test_a_banned_token_never_appears_and_a_forced_one_always_does(oai: openai.OpenAI, base_url: str) -> None:
    the = token_id(oai, base_url, " the")
    free = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=40, temperature=0)
    assert " the" in free.choices[0].text
    banned = oai.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=40, temperature=0, logit_bias={str(the): -100}
    )
    assert " the " not in banned.choices[0].text
    forced = oai.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=4, temperature=0.7, seed=1, logit_bias={str(the): 100}
    )
    assert forced.choices[0].text == " the" * 4


def test_penalties_push_away_from_repetition(oai: openai.OpenAI) -> None:
    def distinct(**fields) -> float:
        text = oai.completions.create(model=MODEL, prompt="The", max_tokens=60, temperature=0, **fields)
        words = text.choices[0].text.split()
        return len(set(words)) / max(1, len(words))

    assert distinct(frequency_penalty=2.0) > distinct()
    assert distinct(presence_penalty=2.0) > distinct()


def test_an_answer_larger_than_a_default_grpc_message_arrives_whole(oai: openai.OpenAI) -> None:
    """Calls to the text service travel by value over gRPC, whose message Serve caps at 4 MB unless the profile
    raises it (it does): two prompts of eight choices with the top 20 log probabilities of every token are about
    5 MB in one answer."""
    completion = oai.completions.create(
        model=MODEL,
        prompt=["Harbour lights", "The tide at dawn"],
        max_tokens=200,
        n=8,
        logprobs=20,
        temperature=1.0,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in completion.choices) == list(range(16))
    for choice in completion.choices:
        assert len(choice.logprobs.tokens) == 200 and len(choice.logprobs.top_logprobs) == 200
        assert all(top for top in choice.logprobs.top_logprobs)  # (alternatives that decode alike share a key)


def test_completion_logprobs_and_echo(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(
        model=MODEL, prompt="The quiet harbour", max_tokens=4, temperature=0, logprobs=2, echo=True
    )
    choice = completion.choices[0]
    assert choice.text.startswith("The quiet harbour")
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None  # the first prompt token has no context
    assert "".join(logprobs.tokens[: completion.usage.prompt_tokens]) == "The quiet harbour"
    assert all(lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert all(len(top) == 2 for top in logprobs.top_logprobs[1:])
    assert "".join(logprobs.tokens) == choice.text


def test_chat_logprobs_n_choices_and_ignored_fields(oai: openai.OpenAI) -> None:
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Tell me about tides."}],
        max_completion_tokens=10,
        temperature=1.0,
        seed=3,
        n=3,
        logprobs=True,
        top_logprobs=3,
        **IGNORED,
    )
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert len({c.message.content for c in chat.choices}) == 3  # independent choices
    for choice in chat.choices:
        content = choice.logprobs.content
        assert content and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
        assert "".join(t.token for t in content) == choice.message.content


def test_n_choices_stream_with_their_own_index(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me about owls."}],
            max_tokens=12,
            temperature=1.0,
            seed=8,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert set(finishes) == {0, 1} and texts[0] and texts[1] and texts[0] != texts[1]
    assert chunks[-1].usage.completion_tokens <= 24
    whole = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me about owls."}],
        max_tokens=12,
        temperature=1.0,
        seed=8,
        n=2,
    )
    assert [c.message.content for c in whole.choices] == [texts[0], texts[1]]  # seeded: the same either way


def test_json_schema_and_json_object_answers_parse(oai: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 30}, "nights": {"type": "integer", "minimum": 1}},
        "required": ["name", "nights"],
        "additionalProperties": False,
    }
    for seed in range(5):
        chat = oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "A trip as JSON."}],
            max_tokens=60,
            temperature=1.2,
            seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "trip", "schema": schema, "strict": True}},
        )
        jsonschema.validate(json.loads(chat.choices[0].message.content), schema)
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=40,
        seed=1,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(chat.choices[0].message.content), dict)


TRIP_TOOL = {
    "type": "function",
    "function": {
        "name": "book_trip",
        "description": "Book a trip.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "nights": {"type": "integer", "maximum": 9}},
            "required": ["city", "nights"],
            "additionalProperties": False,
        },
    },
}


def test_a_named_tool_call_has_arguments_under_its_schema(oai: openai.OpenAI) -> None:
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Book a trip"}],
        tools=[TRIP_TOOL],
        tool_choice={"type": "function", "function": {"name": "book_trip"}},
        max_tokens=80,
        seed=2,
    )
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), TRIP_TOOL["function"]["parameters"])
    required = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Book"}],
        tools=[TRIP_TOOL],
        tool_choice="required",
        max_tokens=80,
        seed=2,
    )
    assert required.choices[0].message.tool_calls[0].function.name == "book_trip"


def test_a_named_tool_call_streams_its_arguments(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Book"}],
            tools=[TRIP_TOOL],
            tool_choice={"type": "function", "function": {"name": "book_trip"}},
            max_tokens=80,
            seed=2,
            stream=True,
        )
    )
    calls = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0].id and calls[0].function.name == "book_trip"
    arguments = "".join(c.function.arguments or "" for c in calls)
    jsonschema.validate(json.loads(arguments), TRIP_TOOL["function"]["parameters"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_tool_choice_auto_is_a_clear_400(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], tools=[TRIP_TOOL])
    assert err.value.body["param"] == "tool_choice"


def test_unknown_fields_are_still_refused(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2, "temprature": 0.5}
    )
    assert response.status_code == 422 and response.json()["error"]["param"] == "temprature"


def test_async_client_and_several_prompts(base_url: str) -> None:
    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        batch = client.completions.create(model=MODEL, prompt=["The owl", "The tide"], max_tokens=5, n=2, seed=1)
        alone = client.completions.create(model=MODEL, prompt="The owl", max_tokens=5, n=2, seed=1)
        return list(await asyncio.gather(batch, alone))

    batch, alone = asyncio.run(run())
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert [c.text for c in batch.choices[:2]] == [c.text for c in alone.choices]


def test_a_request_larger_than_the_engine_queue_is_served_whole(oai: openai.OpenAI) -> None:
    """8 prompts x 8 choices are 64 sequences, more than the local engine runs and queues (16 + 32): they wait
    as one request (one place in the queue, as at the edge), so the request is served, not refused with 503;
    streamed too (one stream per prompt, grouped by the ingress)."""
    prompts = [f"The harbour {n}" for n in range(8)]
    done = oai.completions.create(model=MODEL, prompt=prompts, max_tokens=3, n=8, seed=5)
    assert len(done.choices) == 64 and [c.index for c in done.choices] == list(range(64))
    assert done.usage.completion_tokens <= 64 * 3
    streamed = oai.completions.create(model=MODEL, prompt=prompts, max_tokens=3, n=8, seed=5, stream=True)
    finished = {c.index for chunk in streamed for c in chunk.choices if c.finish_reason}
    assert finished == set(range(64))  # one stream per prompt, the same 64 sequences: every choice finishes


def test_probe_routes(base_url: str) -> None:
    assert httpx.get(f"{base_url}/health").status_code == 200
    assert httpx.get(f"{base_url}/ping").status_code == 200
    assert httpx.get(f"{base_url}/version").json()["version"]
    tokens = httpx.post(f"{base_url}/tokenize", json={"model": MODEL, "prompt": "The quiet harbour"}).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == 256
    text = httpx.post(f"{base_url}/detokenize", json={"model": MODEL, "tokens": tokens["tokens"]}).json()
    assert text == {"prompt": "The quiet harbour"}
    chat = httpx.post(
        f"{base_url}/tokenize", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    ).json()
    assert chat["count"] > 2


def test_langchain_chat_and_completions(base_url: str) -> None:
    from langchain_openai import ChatOpenAI, OpenAI
    from pydantic import BaseModel, Field

    chat = ChatOpenAI(base_url=f"{base_url}/v1", api_key="unused", model=MODEL, max_tokens=12, max_retries=0)
    assert isinstance(chat.invoke("Tell me about tides.").content, str)
    assert "".join(c.content for c in chat.stream("Tell me about owls."))
    assert len(chat.batch(["Hi", "Tell me about bees."])) == 2

    class Trip(BaseModel):
        city: str = Field(max_length=20)
        nights: int = Field(ge=1, le=9)

    structured = ChatOpenAI(
        base_url=f"{base_url}/v1", api_key="unused", model=MODEL, max_tokens=60, max_retries=0
    ).with_structured_output(Trip, method="json_schema")
    trip = structured.invoke("Plan a trip.")
    assert isinstance(trip, Trip) and 1 <= trip.nights <= 9

    completions = OpenAI(base_url=f"{base_url}/v1", api_key="unused", model=MODEL, max_tokens=8, max_retries=0)
    assert isinstance(completions.invoke("Once upon a time"), str)
    assert "".join(completions.stream("The harbour"))
    assert len(completions.batch(["The owl", "The tide", "The bee"])) == 3
