"""Server-sent events in OpenAI's chunk format for text streams (completions and chat), several choices and
prompts at once, ending with ``data: [DONE]``.

The text service streams ``StreamStart``, then ``ChoiceDelta``s, then the ``TextResult``. The first item is awaited
before the HTTP answer starts (by the route), so a request the model rejects gets its 4xx, not a 200 with an
error inside; an error after that goes into the stream as an error object, as OpenAI does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from itertools import groupby
from typing import Any

from deployments.errors import from_exception
from deployments.text import ChoiceDelta, StreamStart, TextResult, coalesce
from edge.openai.chat import chat_logprob, tool_calls_out
from edge.openai.completions import CompletionLogprobs
from edge.openai.protocol import Usage

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def merge(streams: list[AsyncIterator[Any]]) -> AsyncIterator[list[tuple[int, Any]]]:
    """Items of several streams as they come, tagged with the stream's position, in batches of what is ready at
    once (answered in one write; a stream's consecutive deltas of a choice as one); closing stops them all."""
    queue: asyncio.Queue[tuple[int, Any] | BaseException | None] = asyncio.Queue()

    async def pump(n: int, stream: AsyncIterator[Any]) -> None:
        async for item in stream:
            await queue.put((n, item))

    tasks = [asyncio.ensure_future(pump(n, s)) for n, s in enumerate(streams)]
    done = asyncio.gather(*tasks)
    done.add_done_callback(lambda f: queue.put_nowait(None if f.cancelled() or not f.exception() else f.exception()))
    try:
        while True:
            ready = [await queue.get()]
            while not queue.empty():
                ready.append(queue.get_nowait())
            end = next((n for n, item in enumerate(ready) if not isinstance(item, tuple)), len(ready))
            if end:
                runs = groupby(ready[:end], key=lambda tagged: tagged[0])  # by stream: a delta's index is its own
                yield [(p, one) for p, run in runs for one in coalesce([item for _, item in run])]
            if end < len(ready):  # every stream ended (None), or one failed
                if isinstance(failure := ready[end], BaseException):
                    raise failure
                return
    finally:
        for task in tasks:
            task.cancel()
        for stream in streams:
            cancel = getattr(stream, "cancel", None)
            if cancel is not None:
                cancel()


class TextChunks:
    """Turns one request's text stream items into OpenAI chunks (``chat`` or completions)."""

    def __init__(
        self, model: str, chat: bool, n: int, tool_name: str | None = None, continuous_usage: bool = False
    ) -> None:
        self.model, self.chat, self.n, self.tool_name = model, chat, n, tool_name
        self.continuous_usage = continuous_usage  # vLLM's extension: the usage so far in every chunk
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.kind = "chat.completion.chunk" if chat else "text_completion"
        self.started_calls: set[int] = set()
        self.call_ids: dict[int, str] = {}

    def _chunk(self, choices: list[dict[str, Any]]) -> str:
        return sse(
            {"id": self.id, "object": self.kind, "created": self.created, "model": self.model, "choices": choices}
        )

    def start(self, first: StreamStart, offset: int) -> list[str]:
        """The role of every chat choice first (as OpenAI does); a completion with ``echo`` starts with the prompt."""
        if self.chat:
            return [
                self._chunk(
                    [
                        {
                            "index": offset + i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
                for i in range(first.choices)
            ]
        if first.prompt_text is None:
            return []
        logprobs = None
        if first.prompt_logprobs is not None:
            logprobs = CompletionLogprobs.of(first.prompt_logprobs).model_dump()
        return [
            self._chunk([{"index": offset + i, "text": first.prompt_text, "logprobs": logprobs, "finish_reason": None}])
            for i in range(first.choices)
        ]

    def delta(self, item: ChoiceDelta, offset: int) -> list[str]:
        index = offset + item.index
        self.completion_tokens += item.tokens
        if not self.chat:
            if not item.text and item.finish_reason is None and not item.logprobs:
                return []
            logprobs = CompletionLogprobs.of(list(item.logprobs)).model_dump() if item.logprobs else None
            finish = "stop" if item.finish_reason == "tool_calls" else item.finish_reason
            return [self._chunk([{"index": index, "text": item.text, "logprobs": logprobs, "finish_reason": finish}])]
        delta: dict[str, Any] = {}
        if item.text:
            delta["content"] = item.text
        if item.tool_call_arguments:
            delta["tool_calls"] = [self._argument_delta(index, item.tool_call_arguments)]
        if item.tool_calls and index not in self.started_calls:  # calls known only at the end: sent whole
            calls = tool_calls_out(item.tool_calls) or []
            delta["tool_calls"] = [{"index": k, **c.model_dump()} for k, c in enumerate(calls)]
        logprobs = {"content": [chat_logprob(e).model_dump() for e in item.logprobs]} if item.logprobs else None
        if not delta and item.finish_reason is None and logprobs is None:
            return []
        return [
            self._chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": item.finish_reason}])
        ]

    def _argument_delta(self, index: int, arguments: str) -> dict[str, Any]:
        if index in self.started_calls:
            return {"index": 0, "function": {"arguments": arguments}}
        self.started_calls.add(index)
        self.call_ids[index] = f"call_{uuid.uuid4().hex[:24]}"
        return {
            "index": 0,
            "id": self.call_ids[index],
            "type": "function",
            "function": {"name": self.tool_name or "", "arguments": arguments},
        }

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        body = {"id": self.id, "object": self.kind, "created": self.created, "model": self.model, "choices": []}
        body["usage"] = Usage.of(prompt_tokens, completion_tokens).model_dump()
        return sse(body)


async def text_events(
    streams: list[AsyncIterator[Any]],
    firsts: list[StreamStart],
    chunks: TextChunks,
    include_usage: bool,
    timeout: float,
    charge: Callable[[int], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """SSE of one or several text streams (one per prompt; choice ``index`` = prompt * n + k); ``charge`` gets
    the tokens generated when the stream ends (the key's token quota)."""
    prompt_tokens = sum(f.prompt_tokens for f in firsts)
    chunks.prompt_tokens = prompt_tokens
    completion_tokens = 0
    try:
        for p, first in enumerate(firsts):
            for line in chunks.start(first, p * chunks.n):
                yield line
        async with asyncio.timeout(timeout):
            async for batch in merge(streams):
                lines = []
                for p, item in batch:
                    if isinstance(item, ChoiceDelta):
                        lines += chunks.delta(item, p * chunks.n)
                    elif isinstance(item, TextResult):
                        completion_tokens += item.completion_tokens
                if lines:
                    yield "".join(lines)
        if include_usage:
            yield chunks.usage(prompt_tokens, completion_tokens)
    except Exception as exc:  # the headers are sent: the error goes in the stream, as OpenAI does
        yield sse(from_exception(exc, "text", timeout).body())
    finally:
        if charge is not None and completion_tokens:
            with contextlib.suppress(Exception):  # a quota count never breaks an answer
                await charge(completion_tokens)
    yield sse("[DONE]")
