"""OpenAI-shaped requests validate their bounds and convert to the services' requests."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.text import TextResult
from graphs.ingress import validation_error_response
from graphs.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CompletionResponse,
    ImageGenerationRequest,
    SpeechRequest,
)


def test_completion_converts_prompt_and_stop() -> None:
    request = CompletionRequest(model="m", prompt=["hello"], max_tokens=5, stop="\n", seed=1).to_service()
    assert (request.prompt, request.max_tokens, request.stop, request.seed, request.model) == (
        "hello",
        5,
        ["\n"],
        1,
        "m",
    )


def test_chat_joins_text_parts_and_maps_developer_to_system() -> None:
    request = ChatCompletionRequest(
        messages=[
            {"role": "developer", "content": "be kind"},
            {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
        ],
        max_completion_tokens=7,
    ).to_service()
    assert [(m.role, m.content) for m in request.messages] == [("system", "be kind"), ("user", "hi there")]
    assert request.max_tokens == 7


def test_image_size_is_parsed() -> None:
    request = ImageGenerationRequest(prompt="p", size="64x48", n=2).to_service()
    assert (request.width, request.height, request.n) == (64, 48, 2)


def test_completion_response_shape() -> None:
    result = TextResult(text="hi", finish_reason="length", prompt_tokens=3, completion_tokens=2, model="m")
    body = CompletionResponse.of(result).model_dump()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "hi"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.mark.parametrize(
    ("model", "fields", "field"),
    [
        (CompletionRequest, {"prompt": "  "}, "prompt"),
        (CompletionRequest, {"prompt": ["a", "b"]}, "prompt"),
        (CompletionRequest, {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        (CompletionRequest, {"prompt": "x", "stop": ["a"] * 5}, "stop"),
        (CompletionRequest, {"prompt": "x", "n": 2}, "n"),
        (ChatCompletionRequest, {"messages": []}, "messages"),
        (ChatCompletionRequest, {"messages": [{"role": "robot", "content": "x"}]}, "messages"),
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
    import json

    assert json.loads(response.body)["error"]["param"].split(".")[0] == field
