"""The continuous-batching engine: requests join and leave the running batch token by token (tiny model, no Ray)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from deployments.errors import Unavailable
from deployments.text import TextConfig, TextRequest, TextService
from deployments.text.admission import Admission
from deployments.text.config import EngineConfig
from deployments.text.engine import EngineRequest, SamplingParams
from deployments.text.sampling import RowState, TokenTables, sample_step
from deployments.text.tokens import IncrementalDetokenizer, StopStrings


def test_a_request_admitted_while_a_long_one_runs_finishes_first(text_service: TextService) -> None:
    done: dict[str, float] = {}

    async def timed(name: str, request: TextRequest) -> None:
        await text_service.generate(text_service.prepare(request))
        done[name] = time.perf_counter()

    async def scenario() -> int:
        long = asyncio.ensure_future(
            timed("long", TextRequest(prompt="A long story", max_tokens=200, min_tokens=200, temperature=0))
        )
        deadline = time.monotonic() + 60
        while text_service.engine.describe()["running"] == 0:  # the long one is in the batch
            assert time.monotonic() < deadline, "the long request never started"
            await asyncio.sleep(0.005)
        steps = text_service.engine.describe()["steps"]
        await timed("short", TextRequest(prompt="Hi", max_tokens=4, min_tokens=4, temperature=0))
        short_steps = text_service.engine.describe()["steps"] - steps
        await long
        return short_steps

    short_steps = asyncio.run(scenario())
    assert done["short"] < done["long"]
    assert short_steps < 60  # it joined the running batch: a handful of steps, not the long one's 200


def test_cancel_frees_the_slot_and_its_kv_blocks(text_service: TextService) -> None:
    engine = text_service.engine

    async def scenario() -> None:
        prepared = text_service.prepare(TextRequest(prompt="Go on", max_tokens=200, min_tokens=200, temperature=0))
        await engine.submit(EngineRequest("cancel-me", prepared.prompt_ids, prepared.params[0]))
        stream = engine.stream("cancel-me")
        got = 0
        async for output in stream:
            got += len(output.tokens)
            if got >= 5:
                break
        held = engine.describe()["kv_cache"]["blocks_held"]
        await stream.aclose()  # as when a client disconnects
        assert held > 0
        assert engine.describe()["running"] == 0 and engine.describe()["reserved_tokens"] == 0
        deadline = time.monotonic() + 5  # the loop frees the blocks at its next step
        while engine.describe()["kv_cache"]["requests_holding_blocks"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert engine.describe()["kv_cache"]["blocks_held"] == 0

    asyncio.run(scenario())


def test_limits_stops_and_sampling_hold_per_request_within_one_batch(text_service: TextService) -> None:
    (the,) = text_service.tokenizer(" the", add_special_tokens=False)["input_ids"]
    requests = [
        TextRequest(prompt="The lighthouse keeper", max_tokens=12, temperature=0),
        TextRequest(prompt="Rain", max_tokens=4, temperature=0, ignore_eos=True),
        TextRequest(prompt="Breaking news from the harbour today", max_tokens=30, temperature=0, stop=["e"]),
        TextRequest(prompt="A seeded one", max_tokens=8, temperature=1.0, seed=11),
        TextRequest(prompt="Sampled", max_tokens=5, temperature=0.9, top_k=5),
        TextRequest(prompt="Biased", max_tokens=6, temperature=0, logit_bias={the: 100.0}),
    ]
    solo = [asyncio.run(text_service.generate(text_service.prepare(r))) for r in requests]

    async def together() -> list:
        return await asyncio.gather(*(text_service.generate(text_service.prepare(r)) for r in requests))

    steps = text_service.engine.describe()["steps"]
    batched = asyncio.run(together())
    taken = text_service.engine.describe()["steps"] - steps
    assert taken < sum(r.completion_tokens for r in batched)  # they shared steps
    for result, request, alone in zip(batched, requests, solo, strict=True):
        assert result.completion_tokens <= request.max_tokens
        if request.temperature == 0 or request.seed is not None:
            assert result.text == alone.text  # greedy, seeded and biased rows: as if alone
    assert batched[1].completion_tokens == 4
    assert "e" not in batched[2].text and batched[2].finish_reason == "stop"
    assert batched[5].text == " the" * 6


def test_long_prompts_prefill_in_chunks_beside_decoding_requests(tiny_models) -> None:
    """A prompt longer than the step's token budget is prefilled over several steps; meanwhile other requests
    decode in the same steps (rows without a new token are padding for the sampling step)."""
    config = TextConfig(
        model=str(tiny_models / "text"), engine=EngineConfig(kv_cache={"max_batch_tokens": 16, "page_size": 16})
    )
    svc = TextService(config)
    try:
        long_prompt = " ".join(["the quiet harbour"] * 30)
        requests = [
            TextRequest(prompt="Hi", max_tokens=30, min_tokens=30, temperature=0),
            TextRequest(prompt=long_prompt, max_tokens=5, min_tokens=5, temperature=0.8, seed=1, frequency_penalty=1.0),
            TextRequest(prompt="The owl", max_tokens=20, min_tokens=20, temperature=0),
        ]

        async def together() -> list:
            return await asyncio.gather(*(svc.generate(svc.prepare(r)) for r in requests))

        results = asyncio.run(together())
        assert [r.completion_tokens for r in results] == [30, 5, 20]
        assert results[1].prompt_tokens > 16
        alone = asyncio.run(svc.generate(svc.prepare(requests[1])))
        assert alone.text == results[1].text
    finally:
        svc.engine.close(wait=True)


def test_a_full_engine_queues_then_refuses(tiny_models) -> None:
    config = TextConfig(
        model=str(tiny_models / "text"),
        engine=EngineConfig(max_running=1, max_waiting=1, retry_after_s=3),
    )
    svc = TextService(config)
    try:

        async def scenario() -> tuple[object, float]:
            # Another request holds the one running place for as long as the test wants (no race with how fast
            # the machine generates): the next request waits for it, one more is refused at once.
            admission = svc.engine.admission
            await admission.acquire(1)
            request = TextRequest(prompt="Long", max_tokens=12, min_tokens=12, temperature=0)
            waiting = asyncio.ensure_future(svc.generate(svc.prepare(request)))
            for _ in range(1000):
                if admission.waiting == 1:
                    break
                await asyncio.sleep(0.01)
            assert admission.waiting == 1 and not waiting.done()
            with pytest.raises(Unavailable) as err:
                await svc.generate(svc.prepare(request))
            admission.release(1)  # the place is free: the waiting request runs to its end
            return await asyncio.wait_for(waiting, 60), err.value.retry_after_s

        result, retry_after = asyncio.run(scenario())
        assert result.completion_tokens == 12 and retry_after == 3
    finally:
        svc.engine.close(wait=True)


def test_admission_counts_tokens_and_hands_places_on_in_order() -> None:
    admission = Admission(max_running=4, max_waiting=2, token_budget=100, retry_after_s=1)

    async def scenario() -> list[str]:
        order: list[str] = []
        await admission.acquire(60)

        async def waiter(name: str, tokens: int) -> None:
            await admission.acquire(tokens)
            order.append(name)

        a = asyncio.ensure_future(waiter("a", 50))  # does not fit next to the 60 reserved
        b = asyncio.ensure_future(waiter("b", 10))  # fits, but waits behind a (first come, first served)
        await asyncio.sleep(0.01)
        assert admission.waiting == 2 and order == []
        with pytest.raises(Unavailable):
            await admission.acquire(1)
        admission.release(60)
        await asyncio.gather(a, b)
        return order

    assert asyncio.run(scenario()) == ["a", "b"]
    assert admission.running == 2 and admission.reserved == 60


def test_the_sequences_of_one_request_wait_as_one_request() -> None:
    """A request's candidates (``n``, ``best_of``, every prompt of a completion) take one place in the queue: a
    large request alone is never refused, and a second request still finds the queue full at ``max_waiting``."""
    admission = Admission(max_running=1, max_waiting=1, token_budget=100, retry_after_s=1)

    async def scenario() -> int:
        await admission.acquire(10)  # the one running place is taken
        waiting = [asyncio.ensure_future(admission.acquire(10, "big")) for _ in range(6)]
        await asyncio.sleep(0.01)
        assert admission.waiting == 1  # six sequences, one request
        with pytest.raises(Unavailable):
            await admission.acquire(10, "other")
        waiting[-1].cancel()  # one sequence gives up: its request still waits with the rest
        await asyncio.sleep(0.01)
        assert admission.waiting == 1
        for _ in range(5):
            admission.release(10)
            await asyncio.sleep(0.01)
        await asyncio.gather(*waiting[:-1])
        return admission.waiting

    assert asyncio.run(scenario()) == 0
    assert admission.running == 1


def tables(vocab: int = 8) -> TokenTables:
    raw = [b"a", b"b", b'"', b"}", b"c", b"", b"d", b"e"][:vocab]
    return TokenTables(vocab, eos_ids=[5], token_bytes=raw)


def row(**params) -> RowState:
    return RowState(SamplingParams(max_tokens=params.pop("max_tokens", 10), **params), prompt_ids=[0, 1])


def test_the_sampling_step_applies_bias_min_tokens_and_seeds_per_row() -> None:
    logits = torch.zeros(4, 8)
    logits[:, 5] = 5.0  # end-of-text is the likeliest everywhere
    rows = [
        row(temperature=0.0),  # greedy: end-of-text
        row(temperature=0.0, min_tokens=3),  # not before 3 tokens
        row(temperature=0.0, logit_bias=((6, 100.0),)),  # forced
        row(temperature=1.0, seed=4, logprobs=2),  # seeded sample with logprobs
    ]
    tokens = sample_step(logits, rows, tables())
    assert tokens[0] == 5 and tokens[1] != 5 and tokens[2] == 6
    again = sample_step(logits[3:4], [row(temperature=1.0, seed=4, logprobs=2)], tables())
    assert again == [tokens[3]]  # the same seed, the same draw, whatever the batch
    choice = rows[3].choices[0]
    assert choice.token_id == tokens[3] and len(choice.top) == 2 and choice.top[0][0] == 5
    assert choice.logprob == pytest.approx(float(torch.log_softmax(logits[3], -1)[tokens[3]]))


def test_the_sampling_step_penalises_what_a_row_generated() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0, 0.0, 0.0, -9.0, 0.0, 0.0]])
    repeat = row(temperature=0.0, frequency_penalty=1.0)
    repeat.generated = [0]
    assert sample_step(logits.clone(), [repeat], tables()) == [1]
    plain = row(temperature=0.0)
    plain.generated = [0]
    assert sample_step(logits.clone(), [plain], tables()) == [0]


def test_closing_tokens_are_the_quotes_and_brackets_of_the_vocabulary() -> None:
    assert set(tables().closing_ids.tolist()) == {2, 3}  # '"' and '}', not letters, not end-of-text


def test_the_detokenizer_holds_back_half_characters(text_service: TextService) -> None:
    ids = text_service.tokenizer("café 🎉 naïve", add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(text_service.tokenizer)
    pieces = [detokenizer.push([i]) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detokenizer.flush() == "café 🎉 naïve"
    assert pieces.count("") >= 4  # the bytes of é, ï and 🎉 waited for their last byte


def test_stop_strings_hold_back_what_could_start_one() -> None:
    stops = StopStrings(["END", "\n\n"])
    out = [stops.push(p) for p in ("The st", "ory E", "N", "D and more")]
    assert "E" not in "".join(out[:2])  # held back while it could still be the start of END
    assert "".join(out) == "The story " and stops.stopped
    free = StopStrings([])
    assert [free.push(p) for p in ("a", "b")] == ["a", "b"]


def test_a_running_engine_does_not_keep_the_process_alive(tiny_models) -> None:
    """Its generation loop is a daemon thread: a process whose engine was never stopped still exits."""
    before = set(threading.enumerate())
    svc = TextService(TextConfig(model=str(tiny_models / "text")))
    try:
        assert svc.engine.running
        started = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        assert started and all(t.daemon for t in started), [t.name for t in started if not t.daemon]
    finally:
        svc.engine.close(wait=True)
