"""OpenAI-shaped requests: strict about types and bounds, tolerant of the standard fields, converted at the edge."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from deployments.text import Choice, TextResult
from deployments.text.schemas import TokenLogprob, TopLogprob
from edge.app import validation_error_response
from edge.openai.chat import ChatCompletionRequest, ChatCompletionResponse
from edge.openai.completions import CompletionRequest, CompletionResponse
from edge.openai.media import ImageGenerationRequest, SpeechRequest
from edge.openai.protocol import IGNORED_FIELDS


def test_completion_converts_prompt_and_the_sampling_surface() -> None:
    (request,) = CompletionRequest(
        model="m",
        prompt=["hello"],
        max_tokens=5,
        stop="\n",
        seed=1,
        frequency_penalty=0.5,
        presence_penalty=0.2,
        logit_bias={"42": -100},
        n=2,
        best_of=3,
        echo=True,
        logprobs=2,
        top_k=-1,
        min_p=0.1,
        ignore_eos=True,
    ).to_service()
    assert (request.prompt, request.max_tokens, request.stop, request.seed, request.model) == (
        "hello",
        5,
        ["\n"],
        1,
        "m",
    )
    assert (request.frequency_penalty, request.presence_penalty, request.logit_bias) == (0.5, 0.2, {42: -100})
    assert (request.n, request.best_of, request.echo, request.logprobs) == (2, 3, True, 2)
    assert (request.top_k, request.min_p, request.ignore_eos) == (0, 0.1, True)


def test_completion_takes_several_prompts_and_token_ids() -> None:
    assert [r.prompt for r in CompletionRequest(prompt=["a", "b"]).to_service()] == ["a", "b"]
    assert [r.prompt_token_ids for r in CompletionRequest(prompt=[1, 2, 3]).to_service()] == [[1, 2, 3]]
    assert [r.prompt_token_ids for r in CompletionRequest(prompt=[[1], [2, 3]]).to_service()] == [[1], [2, 3]]


def test_what_langchain_and_guidellm_send_is_accepted() -> None:
    """LangChain's OpenAI (completions) sends its defaults; guidellm sends ignore_eos, stop null and
    max_completion_tokens; the Python client may send store, metadata, service_tier."""
    CompletionRequest(
        prompt=["hi"],
        model="m",
        temperature=0.7,
        top_p=1,
        frequency_penalty=0,
        presence_penalty=0,
        n=1,
        logit_bias={},
        max_tokens=256,
        seed=None,
        logprobs=None,
        stream=False,
    )
    request = ChatCompletionRequest(
        messages=[{"role": "user", "content": "hi"}],
        model="m",
        stream=True,
        stop=None,
        ignore_eos=True,
        max_completion_tokens=32,
        stream_options={"include_usage": True},
        store=False,
        metadata={"a": "b"},
        service_tier="auto",
        parallel_tool_calls=True,
        user="u1",
    )
    assert request.to_service().max_tokens == 32 and request.include_usage


def test_chat_converts_roles_parts_tools_and_formats() -> None:
    request = ChatCompletionRequest(
        messages=[
            {"role": "developer", "content": "be kind"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
        ],
        max_completion_tokens=7,
        logprobs=True,
        top_logprobs=3,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        response_format=None,
    ).to_service()
    assert [(m.role, m.content) for m in request.messages][:2] == [("system", "be kind"), ("user", "hi there")]
    assert request.messages[2].tool_calls[0].function.name == "f" and request.messages[3].tool_call_id == "c1"
    assert (request.max_tokens, request.logprobs, request.tool_choice, request.tools[0].name) == (7, 3, "f", "f")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    formatted = ChatCompletionRequest(
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}},
    ).to_service()
    assert formatted.response_format.type == "json_schema" and formatted.response_format.json_schema == schema


def test_images_in_chat_are_a_400_for_a_text_model() -> None:
    from deployments.errors import ServiceError

    request = ChatCompletionRequest(
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    )
    with pytest.raises(ServiceError) as err:
        request.to_service()
    assert err.value.status == 400 and err.value.param == "messages.0.content"


def test_the_deprecated_functions_become_tools() -> None:
    request = ChatCompletionRequest(
        messages=[{"role": "user", "content": "x"}],
        functions=[{"name": "g", "parameters": {"type": "object"}}],
        function_call={"name": "g"},
    ).to_service()
    assert request.tools[0].name == "g" and request.tool_choice == "g"


def test_the_ignored_fields_are_declared_and_documented() -> None:
    fields = set(ChatCompletionRequest.model_fields) | set(CompletionRequest.model_fields)
    fields |= set(ImageGenerationRequest.model_fields) | set(SpeechRequest.model_fields)
    declared = {f.split(".")[0] for f in IGNORED_FIELDS} - {"stream_options"}
    assert declared <= fields
    for model in (ChatCompletionRequest, CompletionRequest, ImageGenerationRequest, SpeechRequest):
        for name, field in model.model_fields.items():
            if name in IGNORED_FIELDS:
                assert "ignored" in (field.description or "").lower(), name


def test_image_size_is_parsed() -> None:
    request = ImageGenerationRequest(prompt="p", size="64x48", n=2, quality="hd", style="vivid").to_service()
    assert (request.width, request.height, request.n) == (64, 48, 2)


def test_completion_response_numbers_choices_across_prompts_and_echoes() -> None:
    def result(text: str, prompt: str) -> TextResult:
        entry = TokenLogprob(
            token=text, token_id=1, logprob=-0.5, top=[TopLogprob(token=text, token_id=1, logprob=-0.5)]
        )
        choices = [
            Choice(index=k, text=f"{text}{k}", finish_reason="length", completion_tokens=2, logprobs=[entry])
            for k in range(2)
        ]
        return TextResult(
            choices=choices,
            prompt_tokens=3,
            completion_tokens=4,
            model="m",
            prompt_text=prompt,
            prompt_logprobs=[TokenLogprob(token=prompt, token_id=2, logprob=None), entry],
        )

    body = CompletionResponse.of([result("a", "P"), result("b", "Q")], n=2).model_dump()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == ["Pa0", "Pa1", "Qb0", "Qb1"]
    assert body["choices"][0]["logprobs"]["token_logprobs"] == [None, -0.5, -0.5]
    assert body["choices"][0]["logprobs"]["tokens"][0] == "P"  # the first prompt token is there, unscored
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}


def test_chat_response_shapes_logprobs_and_tool_calls() -> None:
    from deployments.text.schemas import ToolCall, ToolCallFunction

    entry = TokenLogprob(
        token="hi",
        token_id=7,
        logprob=-0.1,
        bytes=[104, 105],
        top=[TopLogprob(token="hi", token_id=7, logprob=-0.1, bytes=[104, 105])],
    )
    call = ToolCall(id="call_1", function=ToolCallFunction(name="f", arguments='{"a": 1}'))
    result = TextResult(
        choices=[
            Choice(index=0, text="hi", finish_reason="stop", completion_tokens=1, logprobs=[entry]),
            Choice(index=1, text="", finish_reason="tool_calls", completion_tokens=5, tool_calls=[call]),
        ],
        prompt_tokens=2,
        completion_tokens=6,
        model="m",
    )
    body = ChatCompletionResponse.of(result).model_dump()
    first, second = body["choices"]
    assert first["logprobs"]["content"][0] == {
        "token": "hi",
        "logprob": -0.1,
        "bytes": [104, 105],
        "top_logprobs": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105]}],
    }
    assert second["message"]["content"] is None and second["finish_reason"] == "tool_calls"
    assert second["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}


@pytest.mark.parametrize(
    ("model", "fields", "field"),
    [
        (CompletionRequest, {"prompt": "  "}, "prompt"),
        (CompletionRequest, {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        (CompletionRequest, {"prompt": "x", "max_tokens": "5"}, "max_tokens"),  # strict types: no "5" for 5
        (CompletionRequest, {"prompt": "x", "stop": ["a"] * 5}, "stop"),
        (CompletionRequest, {"prompt": "x", "n": 0}, "n"),
        (CompletionRequest, {"prompt": "x", "logit_bias": {"the": 1}}, "logit_bias"),
        (CompletionRequest, {"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"),
        (CompletionRequest, {"prompt": "x", "frequency_penalty": 2.5}, "frequency_penalty"),
        (CompletionRequest, {"prompt": "x", "surprise": 1}, "surprise"),  # not an OpenAI field: refused
        (CompletionRequest, {"prompt": "x", "suffix": "end"}, "suffix"),  # no fill-in-the-middle
        (ChatCompletionRequest, {"messages": []}, "messages"),
        (ChatCompletionRequest, {"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21}, "top_logprobs"),
        (ChatCompletionRequest, {"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        (ChatCompletionRequest, {"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages"),
        (
            ChatCompletionRequest,
            {"messages": [{"role": "user", "content": "x"}], "modalities": ["audio"]},
            "modalities",
        ),
        (ImageGenerationRequest, {"prompt": "x", "size": "65x64"}, "size"),
        (ImageGenerationRequest, {"prompt": "x", "size": "big"}, "size"),
        (ImageGenerationRequest, {"prompt": "x", "steps": 0}, "steps"),
        (ImageGenerationRequest, {"prompt": "x", "response_format": "url"}, "response_format"),
        (SpeechRequest, {"input": ""}, "input"),
        (SpeechRequest, {"input": "x" * 5000}, "input"),
        (SpeechRequest, {"input": "x", "response_format": "mp3"}, "response_format"),
    ],
)
def test_bad_fields_are_named_in_the_error_body(model, fields, field) -> None:
    with pytest.raises(ValidationError) as err:
        model(**fields)
    errors = [{**e, "loc": ("body", *e["loc"])} for e in err.value.errors()]
    response = validation_error_response(errors)
    assert response.status_code == 422
    assert json.loads(response.body)["error"]["param"].split(".")[0] == field


# --- structured outputs in every common shape ---------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"response_format": {"type": "json_object", "schema": SCHEMA}}, ("json_schema", SCHEMA)),
        ({"response_format": {"type": "json_object"}}, ("json_object", None)),
        ({"guided_json": SCHEMA}, ("json_schema", SCHEMA)),
        ({"guided_json": json.dumps(SCHEMA)}, ("json_schema", SCHEMA)),
        ({"guided_regex": "[0-9]+"}, ("regex", "[0-9]+")),
        ({"guided_choice": ["a", "b"]}, ("choice", ["a", "b"])),
        ({"guided_grammar": 'start: "x"'}, ("grammar", 'start: "x"')),
        ({"structured_outputs": {"json": SCHEMA}}, ("json_schema", SCHEMA)),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, ("choice", ["yes", "no"])),
        ({"structured_outputs": {"json_object": True}}, ("json_object", None)),
    ],
)
def test_every_shape_of_structured_output_reaches_the_text_service(extra: dict, expected: tuple) -> None:
    chat = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "x"}], **extra})
    fmt = chat.to_service().response_format
    value = {"json_schema": fmt.json_schema, "regex": fmt.regex, "choice": fmt.choices, "grammar": fmt.grammar}
    assert (fmt.type, value.get(fmt.type)) == expected


def test_two_constraints_at_once_are_a_400_naming_the_second() -> None:
    from deployments.errors import ServiceError

    chat = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": "x"}], "guided_regex": "a+", "guided_choice": ["a"]}
    )
    with pytest.raises(ServiceError) as err:
        chat.to_service()
    assert (err.value.status, err.value.param) == (400, "guided_choice")
    completion = CompletionRequest.model_validate({"prompt": "x", "guided_json": "not json"})
    with pytest.raises(ServiceError) as err:
        completion.to_service()
    assert err.value.param == "guided_json"


# --- the Responses API and embeddings ------------------------------------------------------------------------
def test_a_responses_request_becomes_a_chat_request_after_the_earlier_conversation() -> None:
    from deployments.text.schemas import ChatMessage
    from edge.openai.responses import ResponsesRequest

    body = ResponsesRequest.model_validate(
        {
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Book it."}]},
                {"type": "function_call", "call_id": "call_1", "name": "book", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "booked"},
            ],
            "instructions": "Be brief.",
            "max_output_tokens": 20,
            "text": {"format": {"type": "json_schema", "name": "out", "schema": SCHEMA, "strict": True}},
            "store": False,
            "reasoning": {"effort": "low"},
            "truncation": "disabled",
        }
    )
    earlier = [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello")]
    request = body.to_service(earlier)
    roles = [(m.role, m.content) for m in request.messages]
    assert roles[:3] == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]
    assert roles[3] == ("user", "Book it.") and request.messages[4].tool_calls[0].id == "call_1"
    assert (request.messages[5].role, request.messages[5].tool_call_id) == ("tool", "call_1")
    assert request.max_tokens == 20 and request.response_format.json_schema == SCHEMA


def test_a_conversation_past_the_message_bound_is_a_400_naming_input() -> None:
    """Each part is within bounds, the whole (instructions, an earlier conversation, this turn) is not: a 400
    naming ``input``, not a validation error escaping as a 500 (found by schemathesis)."""
    from deployments.errors import ServiceError
    from deployments.text.schemas import ChatMessage
    from edge.openai.responses import ResponsesRequest

    body = ResponsesRequest.model_validate({"input": [{"role": "user", "content": "x"}] * 200, "instructions": "Hi"})
    earlier = [ChatMessage(role="user", content="y")] * 100
    with pytest.raises(ServiceError) as err:
        body.to_service(earlier)
    assert (err.value.status, err.value.param) == (400, "input")


def test_a_stored_conversation_keeps_the_turn_and_the_answer_not_the_instructions() -> None:
    from deployments.text import Choice, TextResult
    from edge.openai.responses import ResponseObject, ResponsesRequest

    body = ResponsesRequest.model_validate({"input": "Hi", "instructions": "Be brief."})
    result = TextResult(
        choices=[Choice(index=0, text="Hello", finish_reason="stop", completion_tokens=2)],
        prompt_tokens=5,
        completion_tokens=2,
        model="tiny",
    )
    answer = ResponseObject.start(body, "tiny").finish(result)
    assert answer.status == "completed" and answer.output[0].content[0].text == "Hello"
    assert answer.usage.total_tokens == 7 and answer.instructions == "Be brief."
    assert answer.conversation(body.turn()) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]


def test_embeddings_input_shapes_and_the_base64_encoding() -> None:
    import base64

    import numpy as np

    from deployments.embed import EmbedResult
    from edge.openai.embeddings import EmbeddingRequest, EmbeddingResponse

    assert EmbeddingRequest(input="a").to_service().texts == ["a"]
    assert EmbeddingRequest(input=["a", "b"]).to_service().texts == ["a", "b"]
    assert EmbeddingRequest(input=[1, 2]).to_service().token_ids == [[1, 2]]
    assert EmbeddingRequest(input=[[1], [2, 3]]).to_service().token_ids == [[1], [2, 3]]
    result = EmbedResult(vectors=[[0.6, 0.8]], prompt_tokens=3, dimensions=2, model="tiny-bert")
    encoded = EmbeddingResponse.of(result, "base64").data[0].embedding
    assert np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist() == pytest.approx([0.6, 0.8])
