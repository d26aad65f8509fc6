"""The sampling step of the running batch: one call picks the next token of every request in it.

transformers' continuous batching applies per-request temperature, top-k and top-p through processors that carry
one scalar per row. The OpenAI surface needs more per request: penalties over the tokens a request generated, a
logit bias (a vector), ``min_p``, end-of-text held back until ``min_tokens``, a grammar mask for structured output,
a seed of its own, and log probabilities. ``sample_step`` does all of it on the batch's logits, row by row where it
must and vectorised where it can, and returns the chosen tokens; the engine hands them back to the batch.

Log probabilities are those of the model's own distribution (``log_softmax`` of the raw logits, before penalties,
bias, temperature or grammar), as vLLM returns by default: they say how likely the model found a token.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from deployments.text.engine import SamplingParams, TokenChoice

CLOSING_BYTES = frozenset(b'"}] \n\t')


class RowState:
    """What one running sequence needs from step to step: its parameters, what it generated, its random
    generator, its grammar matcher and the log probabilities of its tokens."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], matcher: Any = None, device: str = "cpu") -> None:
        self.params = params
        self.prompt_ids = prompt_ids
        self.generated: list[int] = []
        self.choices: list[TokenChoice] = []
        self.matcher = matcher
        self.closing = False  # structured output ran short of budget: steering to the shortest valid end
        self.generator: torch.Generator | None = None
        if params.seed is not None and not params.greedy:
            self.generator = torch.Generator(device=device).manual_seed(params.seed)
        self.lock = threading.Lock()

    @property
    def remaining(self) -> int:
        return self.params.max_tokens - len(self.generated)


class TokenTables:
    """Per-vocabulary facts the sampling step needs: end-of-text ids and the tokens that close JSON."""

    def __init__(self, vocab_size: int, eos_ids: list[int], token_bytes: list[bytes] | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_ids = [i for i in eos_ids if 0 <= i < vocab_size]
        self.token_bytes = token_bytes or []
        closing = [
            n
            for n, raw in enumerate(self.token_bytes)
            if raw and set(raw) <= CLOSING_BYTES and any(b in raw for b in b'"}]')
        ]
        self.closing_ids = torch.tensor(closing, dtype=torch.long)
        # Closers that end a string (start with a quote), and those that end objects and arrays (no quote).
        self.string_closing_ids = torch.tensor(
            [n for n in closing if self.token_bytes[n].lstrip(b" ").startswith(b'"')], dtype=torch.long
        )
        self.bracket_closing_ids = torch.tensor(
            [n for n in closing if b'"' not in self.token_bytes[n]], dtype=torch.long
        )

    def inside_string(self, tokens: list[int]) -> bool:
        """Whether JSON written as these tokens stops inside a string (an odd number of unescaped quotes)."""
        inside = escaped = False
        for token in tokens:
            for byte in self.token_bytes[token] if token < len(self.token_bytes) else b"":
                if escaped:
                    escaped = False
                elif byte == 0x5C and inside:  # a backslash escapes the next character
                    escaped = True
                elif byte == 0x22:
                    inside = not inside
        return inside


def sample_step(logits: torch.Tensor, rows: list[RowState], tables: TokenTables, generator: Any = None) -> list[int]:
    """Pick the next token of each row of ``logits`` ([rows, vocab], float32) and record it in its ``RowState``."""
    n, vocab = logits.shape
    want_logprobs = any(r.params.logprobs is not None for r in rows)
    raw = torch.log_softmax(logits, dim=-1) if want_logprobs else None
    scores = logits.clone()
    for i, row in enumerate(rows):
        _shape_row(scores[i], row, tables, vocab)
    tokens = [0] * n
    greedy = [i for i, r in enumerate(rows) if r.params.greedy or r.closing]
    sampled = [i for i in range(n) if i not in set(greedy)]
    if greedy:
        idx = torch.tensor(greedy, device=scores.device)
        for i, t in zip(greedy, scores[idx].argmax(dim=-1).tolist(), strict=True):
            tokens[i] = t
    if sampled:
        idx = torch.tensor(sampled, device=scores.device)
        probs = _warp(scores[idx], [rows[i].params for i in sampled])
        unseeded = [k for k, i in enumerate(sampled) if rows[i].generator is None]
        if unseeded:
            picked = torch.multinomial(probs[unseeded], 1, generator=generator).squeeze(-1).tolist()
            for k, t in zip(unseeded, picked, strict=True):
                tokens[sampled[k]] = t
        for k, i in enumerate(sampled):
            if rows[i].generator is not None:  # its own generator: the same seed, the same draws
                tokens[i] = int(torch.multinomial(probs[k], 1, generator=rows[i].generator))
    for i, row in enumerate(rows):
        _record(row, tokens[i], raw[i] if raw is not None else None)
    return tokens


def _shape_row(scores: torch.Tensor, row: RowState, tables: TokenTables, vocab: int) -> None:
    """Penalties, bias, end-of-text rules and the grammar mask of one row, in place."""
    p = row.params
    if p.logit_bias:
        ids = torch.tensor([t for t, _ in p.logit_bias], device=scores.device)
        scores.index_add_(0, ids, torch.tensor([b for _, b in p.logit_bias], device=scores.device))
    if p.penalised:
        _penalise(scores, row, vocab)
    if tables.eos_ids and (p.ignore_eos or len(row.generated) < p.min_tokens):
        scores[tables.eos_ids] = float("-inf")
    if row.matcher is not None:
        _grammar_mask(scores, row, tables)


def _penalise(scores: torch.Tensor, row: RowState, vocab: int) -> None:
    """OpenAI's frequency and presence penalties over generated tokens; the repetition penalty (as in
    transformers) over prompt and generated tokens."""
    p = row.params
    if row.generated and (p.frequency_penalty or p.presence_penalty):
        counts = torch.bincount(torch.tensor(row.generated, device=scores.device), minlength=vocab)[:vocab]
        counts = counts.to(scores.dtype)
        scores -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0).to(scores.dtype)
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(row.prompt_ids) | set(row.generated)), device=scores.device)
        seen = seen[seen < vocab]
        values = scores[seen]
        scores[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)


def apply_bitmask(scores: torch.Tensor, mask: torch.Tensor) -> None:
    """Keep the tokens a packed bitmask allows (bit ``i`` of word ``w`` is token ``32 * w + i``); the rest, and
    tokens past the mask, become -inf. Eager on purpose: llguidance's own kernel is ``torch.compile``d, and
    compiling it stalled a text replica's first constrained request for 12 s on this CPU (50 s under load, past
    Serve's health check, which marked the replica unhealthy)."""
    vocab = scores.shape[-1]
    shifts = torch.arange(32, dtype=torch.int32)
    allowed = ((mask.to(torch.int32).unsqueeze(1) >> shifts) & 1).view(-1).bool()
    if allowed.numel() < vocab:
        allowed = torch.cat([allowed, torch.zeros(vocab - allowed.numel(), dtype=torch.bool)])
    scores.masked_fill_(~allowed[:vocab].to(scores.device), float("-inf"))


def _grammar_mask(scores: torch.Tensor, row: RowState, tables: TokenTables) -> None:
    """Only tokens the grammar allows; near the end of the budget, steer to the shortest valid end."""
    import llguidance.torch as llt

    mask = llt.allocate_token_bitmask(1, tables.vocab_size)
    llt.fill_next_token_bitmask(row.matcher, mask, 0)
    apply_bitmask(scores, mask[0])
    # Steering starts near the end of the budget: within the reserve, and never before the budget's second half (a
    # short budget is first the model's to use; an answer it closes itself ends with `stop`).
    params = row.params
    if row.remaining <= min(params.closing_reserve, params.max_tokens // 2):
        row.closing = True
    if row.closing and tables.closing_ids.numel():
        # Inside a string only a quote ends it (a bracket there is text); outside, brackets end what is open.
        inside = tables.inside_string(row.generated)
        closers = (tables.string_closing_ids if inside else tables.bracket_closing_ids).to(scores.device)
        allowed = closers[torch.isfinite(scores[closers])] if closers.numel() else closers
        if allowed.numel():  # a closer the grammar accepts now: prefer it over more content
            keep = scores[allowed].clone()
            scores.fill_(float("-inf"))
            scores[allowed] = keep


def _warp(scores: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p per row, then the sampling distribution."""
    temps = torch.tensor([p.temperature for p in params], device=scores.device, dtype=scores.dtype)
    scores = scores / temps.unsqueeze(-1)
    top_k = [p.top_k for p in params]
    if any(top_k):
        k = torch.tensor([t if t > 0 else scores.size(-1) for t in top_k], device=scores.device)
        k = k.clamp(max=scores.size(-1))
        threshold = scores.sort(dim=-1, descending=True).values.gather(-1, (k - 1).unsqueeze(-1))
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = torch.tensor([p.top_p for p in params], device=scores.device, dtype=scores.dtype)
        ordered, order = scores.sort(dim=-1, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p).unsqueeze(-1)
        drop[..., -1:] = False  # the most likely token always stays
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = scores.softmax(dim=-1)
    if any(p.min_p > 0 for p in params):
        min_p = torch.tensor([p.min_p for p in params], device=scores.device, dtype=scores.dtype)
        floor = probs.max(dim=-1, keepdim=True).values * min_p.unsqueeze(-1)
        probs = probs.masked_fill(probs < floor, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _record(row: RowState, token: int, raw: torch.Tensor | None) -> None:
    with row.lock:
        row.generated.append(token)
        if row.matcher is not None and not row.matcher.is_stopped():
            row.matcher.consume_token(token)
        if raw is None or row.params.logprobs is None:
            row.choices.append(TokenChoice(token, 0.0))
            return
        top: list[tuple[int, float]] = []
        if row.params.logprobs:
            values, ids = raw.topk(row.params.logprobs)
            top = list(zip(ids.tolist(), values.tolist(), strict=True))
        row.choices.append(TokenChoice(token, float(raw[token]), top))
