"""Acceptance: the official ``openai`` client, pointed at our /v1, gets text, chat, a PNG image and WAV audio."""

from __future__ import annotations

import base64
import io
import json
import struct

import openai
import pytest
import soundfile as sf
from PIL import Image


@pytest.fixture(scope="module")
def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models(oai: openai.OpenAI) -> None:
    # the four generative models, the text experiment's candidate and the experiment's public name
    assert {m.id for m in oai.models.list()} == {
        "tiny-gpt2",
        "tiny-gpt2-b",
        "content-writer",
        "tiny-sd",
        "tiny-vits",
        "tiny-bert",
    }


def test_completion(oai: openai.OpenAI) -> None:
    completion = oai.completions.create(model="tiny-gpt2", prompt="The harbour at night", max_tokens=8, seed=1)
    assert completion.object == "text_completion"
    assert isinstance(completion.choices[0].text, str)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 8


def test_chat_completion(oai: openai.OpenAI) -> None:
    chat = oai.chat.completions.create(
        model="tiny-gpt2",
        messages=[{"role": "system", "content": "You write headlines."}, {"role": "user", "content": "Lighthouses"}],
        max_tokens=8,
    )
    assert chat.choices[0].message.role == "assistant"
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.usage.prompt_tokens > 0


def test_image_of_the_requested_size(oai: openai.OpenAI) -> None:
    result = oai.images.generate(model="tiny-sd", prompt="a lighthouse", size="96x64", response_format="b64_json")
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.format == "PNG"
    assert image.size == (96, 64)


def test_speech_is_wav(oai: openai.OpenAI) -> None:
    audio = oai.audio.speech.create(model="tiny-vits", voice="alloy", input="Welcome aboard.", response_format="wav")
    data, rate = sf.read(io.BytesIO(audio.content))
    assert rate == 16000 and len(data) > 0


SPOKEN = "The sea was calm. The sky was grey! Was it raining? The boats came home."


def speech_events(raw: bytes) -> list[dict]:
    """The client hands back the raw event stream (it has no typed speech events): parse it."""
    return [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]


def test_speech_streams_as_it_is_made_and_joins_into_the_whole_files_samples(oai: openai.OpenAI) -> None:
    """`stream_format`: `sse` (speech.audio.delta events, then speech.audio.done) and `audio` (raw bytes, a WAV
    header of unknown length first for wav); the chunks joined are the whole file's samples, for the same seed."""
    common = {"model": "tiny-vits", "voice": "ana", "input": SPOKEN, "extra_body": {"seed": 11}}
    whole = oai.audio.speech.create(response_format="pcm", **common).content
    with oai.audio.speech.with_streaming_response.create(response_format="pcm", stream_format="sse", **common) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = speech_events(r.read())
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) == 4 and events[-1]["type"] == "speech.audio.done"  # a delta per sentence
    assert events[-1]["usage"]["input_tokens"] > 0
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == whole
    with oai.audio.speech.with_streaming_response.create(response_format="pcm", stream_format="audio", **common) as r:
        assert b"".join(r.iter_bytes()) == whole
    with oai.audio.speech.with_streaming_response.create(response_format="wav", stream_format="audio", **common) as r:
        wav = r.read()
    assert wav[:4] == b"RIFF" and wav[8:16] == b"WAVEfmt " and wav[36:40] == b"data" and wav[44:] == whole
    assert struct.unpack("<I", wav[24:28])[0] == 16000  # the sample rate


def test_flac_does_not_stream_as_events(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.audio.speech.create(
            model="tiny-vits", voice="ana", input="Hello.", response_format="flac", extra_body={"stream_format": "sse"}
        )
    assert err.value.body["param"] == "stream_format"


def test_bad_request_raises_a_client_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as err:
        oai.completions.create(model="tiny-gpt2", prompt="hi", max_tokens=0)
    assert err.value.body["param"] == "max_tokens"


def test_chat_streams_chunk_by_chunk(oai: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me about the sea"}]
    request = {"model": "tiny-gpt2", "messages": messages, "max_tokens": 24, "seed": 5, "temperature": 1.0}
    chunks = list(oai.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len(deltas) >= 3  # tokens arrive as they are generated, not as one block
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    assert chunks[-1].usage.completion_tokens <= 24
    whole = oai.chat.completions.create(**request)
    assert "".join(deltas) == whole.choices[0].message.content  # same seed: the stream spells the same text


def test_completion_stream_and_its_errors(oai: openai.OpenAI, base_url: str) -> None:
    import httpx

    stream = oai.completions.create(model="tiny-gpt2", prompt="Waves", max_tokens=10, seed=2, stream=True)
    texts = [c.choices[0].text for c in stream]
    assert len(texts) >= 2 and all(isinstance(t, str) for t in texts)
    # A request the model cannot serve is a 4xx before anything streams, not a 200 with an error inside.
    response = httpx.post(
        f"{base_url}/v1/completions", json={"prompt": "hi", "max_tokens": 250, "stream": True}, timeout=60
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"
    with httpx.stream(
        "POST", f"{base_url}/v1/completions", json={"prompt": "hi", "max_tokens": 5, "stream": True}, timeout=60
    ) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
