"""The streamed composition's two pieces that need no model: cutting a growing text into parts a voice can read,
and speaking parts a few at a time while handing their audio on in order."""

from __future__ import annotations

import asyncio
import random

import pytest

from deployments.voice import SpeechPart
from graphs.config import NarrationConfig
from graphs.streamed import Narration, SentenceAggregator, first_part


def feed(aggregator: SentenceAggregator, text: str, step: int) -> list[str]:
    """``text`` pushed ``step`` characters at a time (as tokens come), then flushed."""
    parts: list[str] = []
    for start in range(0, len(text), step):
        parts += aggregator.push(text[start : start + step])
    return parts + aggregator.flush()


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_whole_sentences_come_out_whatever_the_token_sizes(step: int) -> None:
    text = "The harbour wakes at dawn. Boats leave one by one! Who keeps the light? Nobody knows"
    parts = feed(SentenceAggregator(min_chars=1, max_chars=200), text, step)
    assert parts == ["The harbour wakes at dawn.", "Boats leave one by one!", "Who keeps the light?", "Nobody knows"]


def test_a_sentence_is_complete_only_once_the_space_after_it_came() -> None:
    aggregator = SentenceAggregator(min_chars=1, max_chars=200)
    assert aggregator.push("It costs 3.") == []  # "3.5" may follow
    assert aggregator.push("5 coins. Then") == ["It costs 3.5 coins."]
    assert aggregator.flush() == ["Then"]


def test_short_sentences_join_the_next_and_run_ons_are_cut_at_a_clause() -> None:
    aggregator = SentenceAggregator(min_chars=20, max_chars=60)
    first = "Yes. No. The boats are all back home now."
    assert aggregator.push(f"{first} ") == [first]
    run_on = "the wind turned at noon, the gulls came in from the sea, and the bell rang for the ships at sea"
    parts = aggregator.push(run_on)
    assert parts and all(len(p) <= 60 for p in parts) and parts[0].endswith("sea,")
    assert " ".join(parts + aggregator.flush()) == run_on


def test_parts_with_nothing_to_say_are_dropped() -> None:
    assert feed(SentenceAggregator(min_chars=1, max_chars=200), "... !? Fine. -- ", 2) == ["Fine."]


def test_the_first_part_is_short_so_that_the_first_sound_comes_soon() -> None:
    title = "The lighthouse keeper and the long winter of the northern harbour town."
    head, tail = first_part(title, 48)
    assert len(head) <= 48 and f"{head} {tail}" == title and not head.endswith(" ")
    assert first_part("Short title.", 48) == ("Short title.", "")
    assert first_part("Waves, gulls and a very long run of words without any clause", 20) == (
        "Waves,",
        "gulls and a very long run of words without any clause",
    )


def test_narration_config_bounds() -> None:
    with pytest.raises(ValueError, match="max_chars"):
        NarrationConfig(min_chars=300, max_chars=200)


def part(text: str) -> SpeechPart:
    return SpeechPart(audio=text.encode(), sample_rate=16000, duration_s=0.1, sentences=1, model="m")


def test_parts_are_spoken_a_few_at_a_time_and_handed_on_in_order() -> None:
    async def scenario() -> tuple[list[bytes], int]:
        busy, most = 0, 0
        heard: list[bytes] = []

        async def speak(text: str, index: int) -> SpeechPart:
            nonlocal busy, most
            busy += 1
            most = max(most, busy)
            await asyncio.sleep(random.uniform(0, 0.02))  # parts finish out of order
            busy -= 1
            return part(f"{index}:{text}")

        async def on_audio(spoken: SpeechPart) -> None:
            heard.append(spoken.audio)

        narration = Narration(speak, on_audio, in_flight=3)
        running = asyncio.create_task(narration.run())
        for i in range(12):
            narration.add(f"s{i}")
            await asyncio.sleep(0.001)
        narration.end()
        await running
        return heard, most

    random.seed(7)
    heard, most = asyncio.run(scenario())
    assert heard == [f"{i}:s{i}".encode() for i in range(12)]
    assert most == 3


def test_a_failing_part_ends_the_narration_and_cancels_the_parts_in_flight() -> None:
    async def scenario() -> tuple[list[bytes], list[int], int]:
        heard: list[bytes] = []
        cancelled: list[int] = []

        async def speak(text: str, index: int) -> SpeechPart:
            try:
                await asyncio.sleep(0.05 if index != 1 else 0.01)
            except asyncio.CancelledError:
                cancelled.append(index)
                raise
            if index == 1:
                raise RuntimeError("voice broke")
            return part(text)

        async def on_audio(spoken: SpeechPart) -> None:
            heard.append(spoken.audio)

        narration = Narration(speak, on_audio, in_flight=2)
        for i in range(5):
            narration.add(f"s{i}")
        with pytest.raises(RuntimeError, match="voice broke"):
            await narration.run()
        await asyncio.sleep(0)
        return heard, cancelled, narration.sent

    heard, cancelled, sent = asyncio.run(scenario())
    assert heard == [b"s0"]  # what came before the failure went out
    assert sent <= 3  # at most the window past the part that failed was sent ...
    assert sorted(cancelled) == list(range(2, sent))  # ... and whatever was, was cancelled
