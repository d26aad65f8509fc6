"""Voice service: Coqui TTS (``coqui-tts``, module ``TTS``) reads the text aloud."""

from __future__ import annotations

import asyncio
import io
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from pydantic import Field
from ray import serve

from deployments.common import (
    SEED_MAX,
    Narrative,
    ServiceConfig,
    StrictModel,
    resolve_model_source,
    resolve_placement,
)
from deployments.errors import InvalidRequest
from deployments.replica import ModelReplica
from deployments.telemetry import telemetry

MAX_INPUT_CHARS = 4096  # OpenAI's limit for /v1/audio/speech
AudioFormat = Literal["wav", "flac", "pcm"]
_SOUNDFILE_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "pcm": ("RAW", "PCM_16")}
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "pcm": "audio/pcm"}


class VoiceConfig(ServiceConfig):
    """Configuration of the voice service (its deployment's ``user_config``)."""

    dtype: Literal["auto", "float32"] = Field(
        "auto", description="Coqui models run in float32 (their vocoders are not half-precision safe)."
    )
    default_speaker: str | None = Field(None, description="Speaker used when a request names none.")
    language: str | None = Field(None, description="Language for multilingual models when a request names none.")
    voice_aliases: dict[str, str] = Field(
        default_factory=dict,
        description="Client voice names mapped to model speakers, e.g. OpenAI's `alloy` to a speaker of yours.",
    )
    max_input_chars: int = Field(MAX_INPUT_CHARS, ge=1, le=100_000, description="Longest text one request may send.")
    max_sentence_chars: int = Field(
        300, ge=20, le=2000, description="Longer sentences are cut at word boundaries before synthesis."
    )
    sentence_pause_s: float = Field(0.15, ge=0.0, le=2.0, description="Silence inserted between sentences.")
    health_probe: bool = Field(True, description="Health checks synthesize one short word.")


class VoiceOptions(StrictModel):
    """How to speak; everything but the text. Omitted fields default from the service config."""

    voice: str | None = Field(None, max_length=128, description="Speaker (or alias); default from config.")
    language: str | None = Field(None, max_length=32)
    response_format: AudioFormat = "wav"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)


class VoiceRequest(VoiceOptions):
    model: str | None = Field(None, max_length=256, description="Model asked for; must be the one served.")
    input: str = Field(min_length=1, max_length=100_000, description="Text to speak.")


class SpeechStart(StrictModel):
    """The first item of a speech stream, sent once the request is known good: what the chunks that follow are
    (16-bit little-endian mono PCM at ``sample_rate``, one per sentence, the pause before it included)."""

    sample_rate: int
    sentences: int
    input_tokens: int  # the voice model's own tokenizer ids for the text spoken
    voice: str | None
    model: str


class SpeechDone(StrictModel):
    """The last item of a speech stream."""

    duration_s: float
    sentences: int
    model: str


class _Speech(NamedTuple):
    """A request made ready to speak: its sentences, whom and in what language, its seed."""

    sentences: list[str]
    tokens: int
    speaker: str | None
    language: str | None
    seed: int | None


def to_pcm16(audio: Any) -> Any:
    """Float samples to 16-bit PCM, the one conversion every format and stream uses (so a stream's chunks, joined,
    equal the whole file's samples)."""
    import numpy as np

    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")


class SpeechPart(StrictModel):
    """One part of a narration made while its text is still being written: 16-bit little-endian mono PCM, the
    pause before it included (none before the first part). Empty when the part has nothing to pronounce."""

    audio: bytes
    sample_rate: int
    duration_s: float
    sentences: int
    model: str


class VoiceResult(StrictModel):
    audio: bytes
    media_type: str
    sample_rate: int
    duration_s: float
    sentences: int
    voice: str | None
    model: str


def narration_text(narrative: Narrative, max_chars: int) -> str:
    """What to read aloud for a titled text: the title, then the body, cut at the last sentence that fits."""
    text = f"{narrative.title.strip().rstrip('.')}. {narrative.body.strip()}" if narrative.title else narrative.body
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    return head[: end + 1] if end > 0 else head


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Sentences of at most ``max_chars``: split on sentence ends, then cut long ones at word boundaries."""
    pieces = [p.strip() for p in re.split(r"(?<=[.!?;:])\s+|\n+", text) if p.strip()]
    out: list[str] = []
    for piece in pieces:
        while len(piece) > max_chars:
            cut = piece.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(piece[:cut].strip())
            piece = piece[cut:].strip()
        if piece:
            out.append(piece)
    return out


class VoiceSynthesizer:
    """Loads a Coqui TTS model (a released model name or a local checkpoint folder) and renders audio."""

    def __init__(self, config: VoiceConfig, tts: Any = None) -> None:
        self.config = config
        self.placement = resolve_placement(config.device)
        self._lock = threading.Lock()  # one synthesis at a time; seeding uses torch's global RNG
        self.sentences_rendered = 0  # since the model loaded: what a cancelled narration no longer adds to
        if tts is None:
            from TTS.api import TTS

            source = resolve_model_source(config.model)
            folder = Path(source)
            if folder.is_dir():
                checkpoint = folder / "model.pth"
                if not checkpoint.exists():
                    candidates = sorted(folder.glob("*.pth"))
                    if not candidates:
                        raise FileNotFoundError(f"no .pth checkpoint in {folder}")
                    checkpoint = candidates[0]
                tts = TTS(model_path=str(checkpoint), config_path=str(folder / "config.json"), progress_bar=False)
            else:
                tts = TTS(source, progress_bar=False)
        self.tts = tts.to(self.placement.device)
        self.sample_rate = int(self.tts.synthesizer.output_sample_rate)
        self.speakers: list[str] = list(self.tts.speakers or []) if self.tts.is_multi_speaker else []
        self.languages: list[str] = list(self.tts.languages or []) if self.tts.is_multi_lingual else []
        self.apply_config(config)

    def close(self) -> None:
        """Nothing runs in the background."""

    def apply_config(self, config: VoiceConfig) -> None:
        if self.speakers:
            for name in [config.default_speaker, *config.voice_aliases.values()]:
                if name is not None and name not in self.speakers:
                    raise ValueError(f"speaker {name!r} is not one of the model's speakers {self.speakers}")
        self.config = config

    def describe(self) -> dict[str, Any]:
        return {
            "dtype": "float32",
            "sample_rate": self.sample_rate,
            "speakers": self.speakers,
            "languages": self.languages,
            "voices": sorted({*self.speakers, *self.config.voice_aliases}),
            "sentences_rendered": self.sentences_rendered,
        }

    def check_health(self) -> None:
        if self.config.health_probe:
            self.synthesize(VoiceRequest(input="ok.", seed=0))

    def _speaker(self, voice: str | None) -> str | None:
        if not self.speakers:
            return None  # single-speaker model: the voice name has nothing to choose
        name = voice or self.config.default_speaker or self.speakers[0]
        name = self.config.voice_aliases.get(name, name)
        if name not in self.speakers:
            choices = ", ".join(sorted({*self.speakers, *self.config.voice_aliases}))
            raise InvalidRequest.for_field("voice", f"unknown voice {voice!r}; choose one of: {choices}")
        return name

    def _language(self, language: str | None) -> str | None:
        if not self.languages:
            return None
        name = language or self.config.language or self.languages[0]
        if name not in self.languages:
            raise InvalidRequest.for_field("language", f"unknown language {name!r}; choose one of: {self.languages}")
        return name

    def _speakable(self, sentence: str) -> tuple[str, int] | None:
        """The sentence as the model can say it and its token count, from one pass of its tokenizer: None when
        only pauses and punctuation would remain; a one-symbol sentence (a lone "I" or "a", on which VITS fails)
        gets a full stop."""
        tokenizer = getattr(self.tts.synthesizer.tts_model, "tokenizer", None)
        if tokenizer is None:
            return sentence, len(sentence)
        ids = tokenizer.text_to_ids(sentence)
        chars = tokenizer.characters
        silent = set(chars.punctuations) | {chars.pad, chars.blank, chars.bos, chars.eos} | set(" \t")
        if not any(chars.id_to_char(i) not in silent for i in ids):
            return None
        return (sentence + ".", len(ids) + 1) if len(ids) < 2 else (sentence, len(ids))

    def prepare(self, request: VoiceRequest, allow_silence: bool = False) -> _Speech:
        """Check the request and cut it into sentences (a 4xx names the field before any audio is made)."""
        cfg = self.config
        cfg.check_model(request.model)
        if len(request.input) > cfg.max_input_chars:
            raise InvalidRequest.for_field("input", f"must be at most {cfg.max_input_chars} characters")
        speaker, language = self._speaker(request.voice), self._language(request.language)
        spoken = [s for s in map(self._speakable, split_sentences(request.input, cfg.max_sentence_chars)) if s]
        if not spoken and not allow_silence:
            raise InvalidRequest.for_field("input", "has nothing this voice can pronounce")
        tokens = sum(n for _, n in spoken)
        return _Speech([s for s, _ in spoken], tokens, speaker, language, request.seed)

    def render(self, speech: _Speech, index: int) -> Any:
        """Sentence ``index`` as 16-bit PCM, the pause before it included (none before the first). Seeded per
        sentence (from the request's seed and the index), so sentences render alike alone or in a stream."""
        import numpy as np
        import torch

        with self._lock, torch.inference_mode():
            if speech.seed is not None:
                torch.manual_seed((speech.seed * 1_000_003 + index) % 2**63)
            wav = self.tts.tts(
                speech.sentences[index], speaker=speech.speaker, language=speech.language, split_sentences=False
            )
            self.sentences_rendered += 1
        audio = np.asarray(wav, dtype=np.float32)
        if index:
            audio = np.concatenate([np.zeros(int(self.config.sentence_pause_s * self.sample_rate), np.float32), audio])
        return to_pcm16(audio)

    def narrate_part(self, text: str, options: VoiceOptions, index: int) -> SpeechPart:
        """Part ``index`` of a narration whose text is still being written (the streamed content pipeline): seeded
        from the options' seed and the part's index, so a seeded content sounds the same every time."""
        import numpy as np

        seed = None if options.seed is None else (options.seed * 1_000_003 + index) % (SEED_MAX + 1)
        request = VoiceRequest(input=text, **options.model_dump(exclude={"seed", "response_format"}), seed=seed)
        speech = self.prepare(request, allow_silence=True)
        pcm = [self.render(speech, i) for i in range(len(speech.sentences))]
        if index and pcm:  # the pause between this part and the one before
            pcm.insert(0, np.zeros(int(self.config.sentence_pause_s * self.sample_rate), "<i2"))
        samples = np.concatenate(pcm) if pcm else np.zeros(0, "<i2")
        return SpeechPart(
            audio=samples.tobytes(),
            sample_rate=self.sample_rate,
            duration_s=round(len(samples) / self.sample_rate, 3),
            sentences=len(speech.sentences),
            model=self.config.name,
        )

    def synthesize(self, request: VoiceRequest) -> VoiceResult:
        import numpy as np
        import soundfile as sf

        speech = self.prepare(request)
        samples = np.concatenate([self.render(speech, i) for i in range(len(speech.sentences))])
        fmt, subtype = _SOUNDFILE_FORMATS[request.response_format]
        buf = io.BytesIO()
        sf.write(buf, samples, self.sample_rate, format=fmt, subtype=subtype)
        return VoiceResult(
            audio=buf.getvalue(),
            media_type=MEDIA_TYPES[request.response_format],
            sample_rate=self.sample_rate,
            duration_s=round(len(samples) / self.sample_rate, 3),
            sentences=len(speech.sentences),
            voice=speech.speaker,
            model=self.config.name,
        )


@serve.deployment(name="voice")
class VoiceDeployment(ModelReplica[VoiceConfig, VoiceSynthesizer]):
    service: ClassVar[str] = "voice"
    config_cls = VoiceConfig

    def load_model(self, config: VoiceConfig) -> VoiceSynthesizer:
        return VoiceSynthesizer(config)

    def observe(self, method: str, args: tuple[Any, ...], result: Any, seconds: float) -> None:
        if isinstance(result, VoiceResult | SpeechDone | SpeechPart):
            telemetry.count("content_studio_audio_seconds_synthesized", result.duration_s, model=result.model)

    async def synthesize(self, request: VoiceRequest) -> VoiceResult:
        return await self.run(self.model.synthesize, request)

    async def synthesize_stream(self, request: VoiceRequest) -> AsyncIterator[SpeechStart | bytes | SpeechDone]:
        """The audio sentence by sentence as it is made: ``SpeechStart``, PCM chunks, ``SpeechDone``. A consumer
        that leaves stops it before the next sentence."""
        model = self.model

        async def items() -> AsyncIterator[SpeechStart | bytes | SpeechDone]:
            speech = await asyncio.to_thread(model.prepare, request)
            yield SpeechStart(
                sample_rate=model.sample_rate,
                sentences=len(speech.sentences),
                input_tokens=speech.tokens,
                voice=speech.speaker,
                model=model.config.name,
            )
            samples = 0
            for index in range(len(speech.sentences)):
                pcm = await asyncio.to_thread(model.render, speech, index)
                samples += len(pcm)
                yield pcm.tobytes()
            duration = round(samples / model.sample_rate, 3)
            yield SpeechDone(duration_s=duration, sentences=len(speech.sentences), model=model.config.name)

        async for item in self.measure_stream("synthesize_stream", (request,), items, SpeechDone):
            yield item

    async def narrate(self, narrative: Narrative, options: VoiceOptions) -> VoiceResult:
        """Read a titled text aloud (the content pipeline passes the text service's response straight in)."""
        model = self.model
        text = narration_text(narrative, model.config.max_input_chars)
        return await self.run(model.synthesize, VoiceRequest(input=text, **options.model_dump()))

    async def narrate_part(self, text: str, options: VoiceOptions, index: int) -> SpeechPart:
        """One part (a sentence or a few) of a narration, while the rest of its text is still being written."""
        return await self.run(self.model.narrate_part, text, options, index)
