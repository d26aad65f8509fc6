"""The streamed composition: the voice reads the article while it is written, the image starts from its first
sentence, and the audio goes out to the client part by part as it is made.

Serve cannot pass a stream to another deployment, so the pipeline reads the text service's token stream itself:
the title, then the body cut into parts of whole sentences (``SentenceAggregator``); each part goes to the voice
service the moment it is complete (``Narration``: a few at a time, their audio sent on in order as
``audio_chunk`` events), and the image is asked for as soon as what its prompt reads exists. The ``article``
event goes out the moment the article is complete, whatever the voice and image are doing::

    text.write_article_stream ──► title, sentences ──► voice.narrate_part (in order) ──► audio_chunk ...
              │                        └ first sentence ──► image.illustrate
              └ article (at once)           recommend.recommend (from the start)

Each part is seeded from the content's seed and its index, so a seeded content sounds the same every time (not
the same as the sequential composition's audio, which reads the whole text in one call). A client that leaves
cancels everything: the text stream (its sequence is freed in the engine), the parts not yet spoken, an image
not yet made. A voice failure leaves the content ``partial``, its error saying how far the audio got; the audio
of a narration that did not finish is not stored.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
import wave
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from deployments.calls import call
from deployments.common import Narrative
from deployments.errors import BadOutput, ServiceError, from_exception, replica_died
from deployments.text import Article, ArticleDelta
from deployments.text.articles import TITLE_MAX_CHARS
from deployments.voice import SpeechPart, VoiceResult
from graphs.config import PipelineConfig
from graphs.making import Making, elapsed_ms
from graphs.schemas import STAGES

# A sentence ends at ., ! or ? (closing quotes or brackets included) followed by white space, or at a line break:
# the white space must have come, so "3.5" or a full stop still being written does not end one.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]\u201d\u2019]*\s+|\n+")


class SentenceAggregator:
    """Cuts a growing text into parts a voice can read: whole sentences of at least ``min_chars``, or a clause of
    a sentence that runs past ``max_chars``."""

    def __init__(self, min_chars: int, max_chars: int) -> None:
        self.min_chars, self.max_chars = min_chars, max_chars
        self.buffer = ""

    def push(self, text: str) -> list[str]:
        """The parts that ``text`` completes (none, most of the time)."""
        self.buffer += text
        parts: list[str] = []
        while (cut := self._cut()) is not None:
            part, self.buffer = self.buffer[:cut].strip(), self.buffer[cut:]
            if _speakable(part):
                parts.append(part)
        return parts

    def flush(self) -> list[str]:
        """What is left once the text is complete."""
        part, self.buffer = self.buffer.strip(), ""
        return [part] if _speakable(part) else []

    def _cut(self) -> int | None:
        for end in _SENTENCE_END.finditer(self.buffer):
            if len(self.buffer[: end.end()].strip()) >= self.min_chars:
                return end.end()
        if len(self.buffer) <= self.max_chars:
            return None
        window = self.buffer[: self.max_chars]
        clause = max(window.rfind(mark) for mark in (", ", "; ", ": ", " - "))
        if clause > 0:
            return clause + 2
        space = window.rfind(" ")
        return space + 1 if space > 0 else self.max_chars


def first_part(text: str, limit: int) -> tuple[str, str]:
    """``text`` cut at its last clause or word before ``limit`` characters: (head, the rest or "")."""
    if len(text) <= limit:
        return text, ""
    window = text[:limit]
    cut = max(window.rfind(mark) + 1 for mark in (", ", "; ", ": ", " - "))
    if cut <= 0:
        cut = window.rfind(" ")
    if cut <= 0:
        return text, ""  # one long word: say it whole
    return text[:cut].strip(), text[cut:].strip()


def _speakable(part: str) -> bool:
    return any(ch.isalnum() for ch in part)


class Narration:
    """Parts of a text handed in as they are complete, spoken by the voice service at most ``in_flight`` at a
    time, and handed on in their order as each is ready. ``run`` ends when ``end`` was called and every part is
    spoken, or with the first failure (the parts still at the voice service are cancelled)."""

    def __init__(
        self,
        speak: Callable[[str, int], Awaitable[SpeechPart]],
        on_audio: Callable[[SpeechPart], Awaitable[None]],
        in_flight: int,
    ) -> None:
        self._speak, self._on_audio, self._in_flight = speak, on_audio, in_flight
        self._texts: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent = 0  # parts handed to the voice service
        self.parts: list[SpeechPart] = []  # parts spoken and handed on, in order

    def add(self, text: str) -> None:
        self._texts.put_nowait(text)

    def end(self) -> None:
        self._texts.put_nowait(None)

    async def run(self) -> list[SpeechPart]:
        slots = asyncio.Semaphore(self._in_flight)
        calls: asyncio.Queue[asyncio.Task[SpeechPart] | None] = asyncio.Queue()
        started: list[asyncio.Task[SpeechPart]] = []

        async def send() -> None:
            while (text := await self._texts.get()) is not None:
                await slots.acquire()
                task = asyncio.create_task(self._speak(text, self.sent))
                started.append(task)
                self.sent += 1
                calls.put_nowait(task)
            calls.put_nowait(None)

        sender = asyncio.create_task(send())
        try:
            while (task := await calls.get()) is not None:
                part = await task
                slots.release()
                self.parts.append(part)
                await self._on_audio(part)
            return self.parts
        finally:
            sender.cancel()
            for task in started:
                task.cancel()


class Stages(Protocol):
    """What the streamed composition uses of the pipeline: its config and the stages both compositions share."""

    config: PipelineConfig

    def article_failed(self, ctx: Making, exc: BaseException) -> ServiceError: ...

    async def article_written(self, ctx: Making) -> None: ...

    async def media_stage(self, ctx: Making, stage: str) -> None: ...


class StreamedComposition:
    """One content made the streamed way: ``run`` returns once every stage ended (or raises without an
    article), with the results in ``ctx`` for the pipeline to store."""

    def __init__(self, stages: Stages, ctx: Making) -> None:
        self.stages, self.ctx, self.config = stages, ctx, stages.config
        narration = self.config.narration
        self.sentences = SentenceAggregator(narration.min_chars, narration.max_chars)
        self.narration = Narration(self._speak, self._on_audio, narration.in_flight)
        self.title = ""
        self.title_done = False
        self.image_task: asyncio.Task[None] | None = None
        self.audio_started: float | None = None

    async def run(self) -> None:
        ctx = self.ctx
        narrating = asyncio.create_task(self.narration.run())
        recommending = asyncio.create_task(self.stages.media_stage(ctx, "recommendations"))
        try:
            try:
                ctx.article = await self._read_article()
            except Exception as exc:
                recommending.cancel()  # its call cancels the recommendations in the replica
                await asyncio.gather(recommending, return_exceptions=True)
                ctx.first_recommendations.cancel()  # (if the task was cancelled before it began)
                raise self.stages.article_failed(ctx, exc) from None
            await self.stages.article_written(ctx)
            if self.image_task is None:
                self._start_image(ctx.article)
            assert self.image_task is not None
            self.narration.end()
            await asyncio.gather(self._finish_audio(narrating), self.image_task, recommending)
        finally:
            for task in (narrating, recommending, self.image_task):
                if task is not None and not task.done():
                    task.cancel()

    # --- the article, read as it is written ------------------------------------------------------------
    async def _read_article(self) -> Article:
        """The text service's stream, each delta sent on as a `token` and fed to the voice and the image. A
        stream lost with a dying text replica before its first delta is sent again (after that, the audio of
        what was read is already out: the content fails, and the client's resend makes it afresh)."""
        ctx, cfg = self.ctx, self.config
        deadline = time.monotonic() + cfg.timeouts_s.article
        attempt = 0
        handle = ctx.article_stream.options(stream=True)
        while True:
            stream = handle.write_article_stream.remote(ctx.article_request)
            article: Article | None = None
            received = False
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    async for item in stream:
                        received = True
                        if isinstance(item, ArticleDelta):
                            await self._on_delta(item)
                        else:
                            article = item
            except Exception as exc:
                if received or attempt >= cfg.retries or not replica_died(exc) or time.monotonic() >= deadline:
                    raise
                attempt += 1
                await asyncio.sleep(min(0.1 * 2**attempt, max(0.0, deadline - time.monotonic())))
                continue
            finally:
                if article is None:
                    stream.cancel()  # the replica stops writing: the engine frees the sequence
            if article is None:
                raise RuntimeError("the text service ended its stream without an article")
            self._end_title()
            for part in self.sentences.flush():
                self._part(part)
            return article

    async def _on_delta(self, delta: ArticleDelta) -> None:
        await self.ctx.emit("token", {"field": delta.field, "text": delta.text})
        if delta.field == "title":
            if not self.title_done:
                self.title += delta.text
            return
        self._end_title()
        for part in self.sentences.push(delta.text):
            self._part(part)

    def _end_title(self) -> None:
        """The title is read first, as a sentence of its own (as the sequential narration reads it)."""
        if self.title_done:
            return
        self.title_done = True
        title = self.title.strip().rstrip(".")
        if _speakable(title):
            self._narrate(f"{title}.")

    def _part(self, part: str) -> None:
        self._narrate(part)
        if self.image_task is None and self.config.image.prompt_from == "first_sentence":
            title = self.title.strip()[:TITLE_MAX_CHARS]
            self._start_image(Narrative(title=title, body=part))

    def _narrate(self, text: str) -> None:
        if self.audio_started is None:  # the first part: short, so that the first sound comes soon
            self.audio_started = time.perf_counter()
            head, tail = first_part(text, self.config.narration.first_chars)
            self.narration.add(head)
            if tail:
                self.narration.add(tail)
            return
        self.narration.add(text)

    # --- the voice -------------------------------------------------------------------------------------
    async def _speak(self, text: str, index: int) -> SpeechPart:
        ctx, cfg = self.ctx, self.config
        voice = ctx.handles["audio"]
        return await call(
            lambda _: voice.narrate_part.remote(text, ctx.voice_options, index),
            STAGES["audio"],
            cfg.timeouts_s.audio,
            cfg.retries,
        )

    async def _on_audio(self, part: SpeechPart) -> None:
        if not part.audio:
            return  # nothing to pronounce in this part
        ctx = self.ctx
        chunk = sum(1 for p in self.narration.parts if p.audio) - 1
        if chunk == 0:
            ctx.record.timings_ms["first_audio"] = elapsed_ms(ctx.started)
        await ctx.emit(
            "audio_chunk",
            {
                "index": chunk,
                "format": "pcm",
                "sample_rate": part.sample_rate,
                "duration_s": part.duration_s,
                "audio": base64.b64encode(part.audio).decode(),
            },
        )

    async def _finish_audio(self, narrating: asyncio.Task[list[SpeechPart]]) -> None:
        """The audio stage ends within its timeout from the moment the article exists, like the sequential one;
        a failure names how far the audio got."""
        ctx, timeout = self.ctx, self.config.timeouts_s.audio
        try:
            parts = await asyncio.wait_for(narrating, timeout)
            if not any(part.audio for part in parts):
                raise BadOutput("the article has nothing the voice can pronounce")
            ctx.results["audio"] = _joined(parts)
        except Exception as exc:
            message = from_exception(exc, STAGES["audio"], timeout).message
            spoken = self.narration.parts
            if spoken:
                seconds = sum(part.duration_s for part in spoken)
                message += f" (the audio stopped after {len(spoken)} of {self.narration.sent} parts, {seconds:.1f} s)"
            ctx.record.errors["audio"] = message
        started = self.audio_started or time.perf_counter()
        ctx.record.timings_ms["audio"] = elapsed_ms(started)
        event: dict[str, Any] = {"ok": "audio" in ctx.results, "ms": ctx.record.timings_ms["audio"]}
        if "audio" in ctx.record.errors:
            event["error"] = ctx.record.errors["audio"]
        await ctx.emit("audio", event)

    # --- the image -------------------------------------------------------------------------------------
    def _start_image(self, narrative: Narrative) -> None:
        self.image_task = asyncio.create_task(self._image(narrative))

    async def _image(self, narrative: Narrative) -> None:
        ctx, cfg = self.ctx, self.config
        image, started = ctx.handles["image"], time.perf_counter()
        try:
            ctx.results["image"] = await call(
                lambda _: image.illustrate.remote(narrative, ctx.image_options, ctx.request.style),
                STAGES["image"],
                cfg.timeouts_s.image,
                cfg.retries,
            )
            ctx.record.timings_ms["first_image"] = elapsed_ms(ctx.started)
        except ServiceError as exc:
            ctx.record.errors["image"] = exc.message
        ctx.record.timings_ms["image"] = elapsed_ms(started)
        event: dict[str, Any] = {"ok": "image" in ctx.results, "ms": ctx.record.timings_ms["image"]}
        if "image" in ctx.record.errors:
            event["error"] = ctx.record.errors["image"]
        await ctx.emit("image", event)


def _joined(parts: list[SpeechPart]) -> VoiceResult:
    """The parts' audio as one WAV file: exactly the samples the client got, in their order."""
    pcm = b"".join(part.audio for part in parts)
    rate = parts[0].sample_rate
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return VoiceResult(
        audio=buf.getvalue(),
        media_type="audio/wav",
        sample_rate=rate,
        duration_s=round(len(pcm) / 2 / rate, 3),
        sentences=sum(part.sentences for part in parts),
        voice=None,
        model=parts[0].model,
    )
