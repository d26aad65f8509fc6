"""A text stream's messages: what is ready at once goes as one (a choice's consecutive deltas merged, the SSE
events of several in one write), and nothing is lost, reordered or mixed between choices and prompts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from deployments.text import ChoiceDelta, StreamStart, TextResult, coalesce
from deployments.text.schemas import Choice, TokenLogprob
from edge.openai.streaming import TextChunks, merge, text_events


def logprob(token: str) -> TokenLogprob:
    return TokenLogprob(token=token, token_id=ord(token[0]), logprob=-0.5, bytes=list(token.encode()))


def test_a_choices_consecutive_deltas_are_one_and_nothing_else_merges() -> None:
    a = [ChoiceDelta(index=0, text=t, tokens=1, logprobs=[logprob(t)]) for t in ("Ti", "de", "s")]
    end = ChoiceDelta(index=0, finish_reason="length")
    other = ChoiceDelta(index=1, text="Sea", tokens=1, logprobs=[logprob("Sea")])
    result = TextResult(choices=[], prompt_tokens=1, completion_tokens=4, model="m")
    merged = coalesce([*a[:2], other, a[2], end, ChoiceDelta(index=0, text="late"), result])
    assert [type(m) for m in merged] == [ChoiceDelta, ChoiceDelta, ChoiceDelta, ChoiceDelta, TextResult]
    first, second, third, after_end, _ = merged
    assert (first.index, first.text, first.tokens) == (0, "Tide", 2)
    assert [e.token for e in first.logprobs] == ["Ti", "de"]
    assert second == other  # another choice between them: each run merges on its own
    assert (third.text, third.tokens, third.finish_reason) == ("s", 1, "length")  # the end joins its choice's run
    assert after_end.text == "late"  # nothing joins a delta that ended its choice
    named = coalesce([ChoiceDelta(tool_call_arguments='{"a"'), ChoiceDelta(tool_call_arguments=": 1}")])
    assert [d.tool_call_arguments for d in named] == ['{"a": 1}'] and named[0].logprobs is None


async def ready(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item


async def failing(*items: Any) -> AsyncIterator[Any]:
    for item in items:
        yield item
    raise RuntimeError("the replica went away")


def deltas(index: int, *texts: str) -> list[ChoiceDelta]:
    return [ChoiceDelta(index=index, text=t, tokens=1) for t in texts]


def done(index: int, text: str) -> list[Any]:
    choice = Choice(index=index, text=text, finish_reason="length", completion_tokens=len(text))
    return [
        ChoiceDelta(index=index, finish_reason="length"),
        TextResult(choices=[choice], prompt_tokens=2, completion_tokens=len(text), model="m"),
    ]


def test_what_is_ready_comes_in_one_batch_each_streams_runs_merged() -> None:
    async def collect() -> list[list[tuple[int, Any]]]:
        streams = [ready(*deltas(0, "a", "b"), *done(0, "ab")), ready(*deltas(0, "x", "y", "z"), *done(0, "xyz"))]
        return [batch async for batch in merge(streams)]

    batches = asyncio.run(collect())
    items = [tagged for batch in batches for tagged in batch]
    assert len(items) < 2 * 4  # fewer messages than deltas: consecutive ones of a stream merged
    for p, text in ((0, "ab"), (1, "xyz")):
        mine = [item for n, item in items if n == p]
        assert "".join(d.text for d in mine if isinstance(d, ChoiceDelta)) == text
        assert isinstance(mine[-1], TextResult) and mine[-2].finish_reason == "length"


def events(lines: list[str]) -> list[Any]:
    body = "".join(lines)
    return [json.loads(e[6:]) if e != "data: [DONE]" else "[DONE]" for e in body.split("\n\n") if e]


def run_events(streams: list[AsyncIterator[Any]], prompts: int) -> list[Any]:
    async def collect() -> list[str]:
        firsts = [StreamStart(model="m", prompt_tokens=2) for _ in range(prompts)]
        chunks = TextChunks("m", chat=False, n=1)
        return [line async for line in text_events(streams, firsts, chunks, include_usage=True, timeout=10)]

    return events(asyncio.run(collect()))


def test_the_sse_of_several_prompts_spells_each_and_counts_every_token() -> None:
    got = run_events(
        [ready(*deltas(0, "a", "b"), *done(0, "ab")), ready(*deltas(0, "x", "y", "z"), *done(0, "xyz"))], 2
    )
    assert got[-1] == "[DONE]" and got[-2]["usage"]["completion_tokens"] == 5
    chunks = [e for e in got[:-2] if e["choices"]]
    by_index = {i: "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in (0, 1)}
    assert by_index == {0: "ab", 1: "xyz"}  # prompt p's choices are numbered from p * n
    assert {c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["index"] == 1} >= {"length"}


def test_a_stream_that_fails_sends_what_came_before_then_the_error() -> None:
    got = run_events([failing(*deltas(0, "par", "tial"))], 1)
    assert got[-1] == "[DONE]" and "error" in got[-2]
    assert "".join(e["choices"][0]["text"] for e in got[:-2]) == "partial"
