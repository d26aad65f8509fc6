"""The APIs clients reach for now, through clients nobody here wrote: the Responses API (``openai``'s
``responses.create``, ``responses.stream``, ``retrieve``, ``delete``; LangChain's ``use_responses_api``),
embeddings (``openai`` in both encodings, LangChain's ``OpenAIEmbeddings``), and structured output that parses on
the offline model with its default budget (LangChain's ``with_structured_output``, instructor's modes)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai
import pytest
from pydantic import BaseModel

MODEL = "tiny-gpt2"
EMBED = "tiny-bert"


@pytest.fixture(scope="module")
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


class Person(BaseModel):  # a schema as people write them: strings without bounds, an integer
    name: str
    city: str
    age: int


# --- the Responses API ------------------------------------------------------------------------------------
def test_a_response_is_created_stored_continued_retrieved_and_deleted(oai: openai.OpenAI) -> None:
    first = oai.responses.create(
        model=MODEL,
        input="Tell me about tides.",
        instructions="Answer briefly.",
        max_output_tokens=12,
        extra_body={"seed": 3},
    )
    assert first.object == "response" and first.status in ("completed", "incomplete")
    assert first.output[0].type == "message" and first.output_text == first.output[0].content[0].text
    assert first.usage.input_tokens > 0 and 0 < first.usage.output_tokens <= 12
    if first.status == "incomplete":
        assert first.incomplete_details.reason == "max_output_tokens"

    again = oai.responses.retrieve(first.id)
    assert again.id == first.id and again.output_text == first.output_text

    follow = oai.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "And about owls?"}]}],
        max_output_tokens=8,
    )
    assert follow.previous_response_id == first.id
    # the continuation read the first turn: its prompt is longer than the new input alone
    alone = oai.responses.create(model=MODEL, input="And about owls?", max_output_tokens=8, store=False)
    assert follow.usage.input_tokens > alone.usage.input_tokens

    deleted = oai.responses.delete(first.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):  # nothing stored without store
        oai.responses.retrieve(alone.id)


def test_a_response_streams_its_typed_events(oai: openai.OpenAI) -> None:
    with oai.responses.stream(
        model=MODEL, input="Write one line about owls.", max_output_tokens=16, extra_body={"seed": 2}
    ) as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == deltas and final.id == events[0].response.id


def test_a_response_calls_a_function_with_arguments_under_its_schema(oai: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "find_person",
        "parameters": Person.model_json_schema(),
    }
    plain = oai.responses.create(
        model=MODEL,
        input="Find Ann.",
        tools=[tool],
        tool_choice={"type": "function", "name": "find_person"},
        extra_body={"seed": 1},
    )
    [call] = [item for item in plain.output if item.type == "function_call"]
    Person.model_validate_json(call.arguments)
    with oai.responses.stream(
        model=MODEL,
        input="Find Ben.",
        tools=[tool],
        tool_choice={"type": "function", "name": "find_person"},
        extra_body={"seed": 1},
    ) as s:
        events = list(s)
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert deltas == done.arguments and Person.model_validate_json(done.arguments)


def test_responses_json_schema_output_parses(oai: openai.OpenAI) -> None:
    parsed = oai.responses.parse(model=MODEL, input="Who lives by the sea?", text_format=Person, temperature=0)
    assert isinstance(parsed.output_parsed, Person) and parsed.status == "completed"


def test_bad_responses_requests_name_the_field(base_url: str) -> None:
    for body, field, status in [
        ({"model": MODEL, "input": " "}, "input", 422),
        ({"model": MODEL, "input": "x", "max_output_tokens": 0}, "max_output_tokens", 422),
        ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input.0.content", 400),
        ({"model": MODEL, "input": "x", "previous_response_id": "resp_missing"}, "previous_response_id", 404),
    ]:  # fmt: skip
        response = httpx.post(f"{base_url}/v1/responses", json=body, timeout=60)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["param"] == field


def test_langchain_on_the_responses_api(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        base_url=f"{base_url}/v1", api_key="unused", model=MODEL, max_tokens=12, max_retries=0, use_responses_api=True
    )
    assert isinstance(chat.invoke("Tell me about tides.").text, str)
    assert "".join(chunk.text for chunk in chat.stream("Tell me about owls."))


# --- embeddings -------------------------------------------------------------------------------------------
def test_embeddings_in_both_encodings(oai: openai.OpenAI, base_url: str) -> None:
    texts = ["a lighthouse by the sea", "the keeper's lantern"]
    floats = oai.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    encoded = oai.embeddings.create(model=EMBED, input=texts)  # the client asks for base64 and decodes it
    assert [d.index for d in floats.data] == [0, 1] and floats.usage.prompt_tokens > 0
    for a, b in zip(floats.data, encoded.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)
        assert np.linalg.norm(a.embedding) == pytest.approx(1.0, abs=1e-4)
    short = oai.embeddings.create(model=EMBED, input=texts[0], dimensions=8, encoding_format="float")
    assert len(short.data[0].embedding) == 8 and np.linalg.norm(short.data[0].embedding) == pytest.approx(1.0, abs=1e-4)
    by_ids = httpx.post(f"{base_url}/v1/embeddings", json={"model": EMBED, "input": [5, 6, 7]}, timeout=60).json()
    assert len(by_ids["data"]) == 1 and by_ids["usage"]["prompt_tokens"] == 3
    too_wide = httpx.post(f"{base_url}/v1/embeddings", json={"input": "x", "dimensions": 4096}, timeout=60)
    assert too_wide.status_code == 400 and too_wide.json()["error"]["param"] == "dimensions"


def test_langchain_embeddings(base_url: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        base_url=f"{base_url}/v1", api_key="unused", model=EMBED, check_embedding_ctx_length=False, max_retries=0
    )
    documents = embeddings.embed_documents(["tides", "owls", "bread"])
    query = embeddings.embed_query("tides")
    assert len(documents) == 3 and np.allclose(documents[0], query, atol=1e-5)


# --- structured output that parses --------------------------------------------------------------------------
def test_langchain_structured_output_parses_with_the_default_budget(base_url: str) -> None:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=f"{base_url}/v1", api_key="unused", model=MODEL, temperature=0, max_retries=0)
    for method in ("json_schema", "function_calling"):
        person = chat.with_structured_output(Person, method=method).invoke("Tell me about someone by the sea.")
        assert isinstance(person, Person), method


def test_instructor_modes_parse_with_the_default_budget(base_url: str) -> None:
    import instructor

    raw = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    for mode in (instructor.Mode.JSON_SCHEMA, instructor.Mode.TOOLS):
        client = instructor.from_openai(raw, mode=mode)
        person, completion = client.chat.completions.create_with_completion(
            model=MODEL,
            response_model=Person,
            messages=[{"role": "user", "content": "Tell me about someone by the sea."}],
            temperature=0,
            max_retries=0,
        )
        assert isinstance(person, Person), mode
        assert completion.choices[0].finish_reason in ("stop", "tool_calls"), (mode, completion)


def test_every_common_shape_of_structured_output(oai: openai.OpenAI) -> None:
    schema = Person.model_json_schema()
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Someone by the sea."}], "temperature": 0}
    with_schema = oai.chat.completions.create(**ask, response_format={"type": "json_object", "schema": schema})
    Person.model_validate_json(with_schema.choices[0].message.content)
    assert with_schema.choices[0].finish_reason == "stop"
    guided = oai.chat.completions.create(**ask, extra_body={"guided_json": schema})
    Person.model_validate_json(guided.choices[0].message.content)
    choice = oai.chat.completions.create(**ask, extra_body={"guided_choice": ["sea", "hill", "town"]})
    assert choice.choices[0].message.content in ("sea", "hill", "town")
    regex = oai.completions.create(model=MODEL, prompt="The year", extra_body={"guided_regex": "[0-9]{4}"})
    assert len(regex.choices[0].text) == 4 and regex.choices[0].text.isdigit()
    outputs = oai.chat.completions.create(**ask, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert outputs.choices[0].message.content in ("yes", "no")
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(**ask, extra_body={"guided_regex": "[a-z]+", "guided_choice": ["a"]})
    assert err.value.body["param"] in ("guided_regex", "guided_choice")
    assert json.loads(guided.choices[0].message.content)
