"""Voice service on the tiny two-speaker Coqui VITS through ``TTS.api.TTS``, without Ray."""

from __future__ import annotations

import io

import pytest
import soundfile as sf

from deployments.errors import ServiceError
from deployments.voice import VoiceConfig, VoiceRequest, VoiceSynthesizer, split_sentences


@pytest.fixture(scope="module")
def synth(tiny_models) -> VoiceSynthesizer:
    config = VoiceConfig(model=str(tiny_models / "voice"), voice_aliases={"alloy": "ben"}, max_input_chars=500)
    return VoiceSynthesizer(config)


def _read(audio: bytes):
    data, rate = sf.read(io.BytesIO(audio), dtype="float32")
    return data, rate


def test_wav_at_the_models_sample_rate(synth: VoiceSynthesizer) -> None:
    result = synth.synthesize(VoiceRequest(input="Hello there, reader.", seed=1))
    data, rate = _read(result.audio)
    assert result.media_type == "audio/wav"
    assert rate == result.sample_rate == 16000
    assert data.ndim == 1 and len(data) > 1000
    assert result.duration_s == pytest.approx(len(data) / rate, abs=1e-3)


def test_long_text_is_split_into_sentences_and_joined(synth: VoiceSynthesizer) -> None:
    one = synth.synthesize(VoiceRequest(input="The sea was calm.", seed=2))
    three = synth.synthesize(VoiceRequest(input="The sea was calm. The sky was grey! Was it raining?", seed=2))
    assert (one.sentences, three.sentences) == (1, 3)
    assert three.duration_s > one.duration_s


def test_speakers_and_aliases(synth: VoiceSynthesizer) -> None:
    assert synth.speakers == ["ana", "ben"]
    ana = synth.synthesize(VoiceRequest(input="same words", voice="ana", seed=3))
    ben = synth.synthesize(VoiceRequest(input="same words", voice="ben", seed=3))
    alias = synth.synthesize(VoiceRequest(input="same words", voice="alloy", seed=3))
    default = synth.synthesize(VoiceRequest(input="same words", seed=3))
    assert ana.audio != ben.audio
    assert alias.voice == "ben" and alias.audio == ben.audio
    assert default.voice == "ana"


def test_same_seed_same_audio(synth: VoiceSynthesizer) -> None:
    a = synth.synthesize(VoiceRequest(input="Repeat after me.", seed=9))
    b = synth.synthesize(VoiceRequest(input="Repeat after me.", seed=9))
    assert a.audio == b.audio


def test_flac_and_raw_pcm(synth: VoiceSynthesizer) -> None:
    flac = synth.synthesize(VoiceRequest(input="hello", response_format="flac", seed=1))
    wav = synth.synthesize(VoiceRequest(input="hello", response_format="wav", seed=1))
    pcm = synth.synthesize(VoiceRequest(input="hello", response_format="pcm", seed=1))
    assert _read(flac.audio)[0].shape == _read(wav.audio)[0].shape
    assert len(pcm.audio) == 2 * len(_read(wav.audio)[0])  # 16-bit mono samples, no header


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input": "hello", "voice": "zed"}, "voice"),
        ({"input": "x" * 501}, "input"),
        ({"input": "12345 ###"}, "input"),  # nothing the tiny alphabet can say
        ({"input": "hello", "model": "tts-1"}, "model"),
    ],
)
def test_bad_requests_name_the_field(synth: VoiceSynthesizer, fields, field) -> None:
    with pytest.raises(ServiceError) as err:
        synth.synthesize(VoiceRequest(**fields))
    assert err.value.param == field


def test_alias_to_a_missing_speaker_is_a_config_error(synth: VoiceSynthesizer) -> None:
    with pytest.raises(ValueError, match="not one of the model's speakers"):
        synth.apply_config(synth.config.model_copy(update={"voice_aliases": {"alloy": "nobody"}}))


def test_split_sentences_bounds_every_piece() -> None:
    text = "First one. Second one!  Third?\n" + "word " * 100
    pieces = split_sentences(text, max_chars=40)
    assert pieces[:3] == ["First one.", "Second one!", "Third?"]
    assert all(0 < len(p) <= 40 for p in pieces)
    assert " ".join(pieces[3:]).split() == ["word"] * 100


@pytest.mark.parametrize("text", ["I", "a", "GÊ", "I. a. b"])
def test_one_letter_sentences_are_spoken(synth: VoiceSynthesizer, text: str) -> None:
    # Found by the schemathesis run: Coqui's VITS fails on a one-symbol input.
    assert synth.synthesize(VoiceRequest(input=text, seed=0)).duration_s > 0


def test_sentences_rendered_one_by_one_join_into_the_whole_files_samples(synth: VoiceSynthesizer) -> None:
    """What a stream sends (each sentence as PCM, the pause before it included) joins into exactly the samples of
    the whole file, as each sentence is seeded from the request's seed and its index."""
    request = VoiceRequest(input="The sea was calm. The sky was grey! Was it raining?", seed=7, response_format="pcm")
    speech = synth.prepare(request)
    pieces = [synth.render(speech, i).tobytes() for i in range(3)]
    assert b"".join(pieces) == synth.synthesize(request).audio
    backwards = [synth.render(speech, i).tobytes() for i in reversed(range(3))]  # no sentence depends on another
    assert backwards[::-1] == pieces
    wav = synth.synthesize(request.model_copy(update={"response_format": "wav"})).audio
    assert sf.read(io.BytesIO(wav), dtype="int16")[0].tobytes() == b"".join(pieces)
    assert speech.tokens > 0 and len(speech.sentences) == 3
