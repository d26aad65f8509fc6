"""Structured output: JSON schemas compiled to grammars that mask the logits at every step (llguidance).

llguidance (the grammar engine behind vLLM's and SGLang's guided decoding, and llama.cpp's) turns a JSON schema
into a token-level matcher: at each step it says which tokens keep the output a valid prefix of a document that
validates, so the answer always parses and validates. We chose it over xgrammar after xgrammar 0.2.9 let a
control character into a string bounded by ``maxLength`` here (invalid JSON), and over outlines and
lm-format-enforcer for its speed, its complete JSON-schema support and its single dependency-free wheel.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from deployments.errors import InvalidRequest

# The JSON layout models write by themselves (and ``json.dumps`` writes): a compact layout the model did not
# expect would push it to write a separator inside the next string.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_TOKENIZERS: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def ll_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a Hugging Face tokenizer, built once per tokenizer and vocabulary size."""
    import llguidance.hf

    with _LOCK:
        per_vocab = _TOKENIZERS.setdefault(tokenizer, {})
        if vocab_size not in per_vocab:
            per_vocab[vocab_size] = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        return per_vocab[vocab_size]


def json_schema_grammar(schema: dict[str, Any], field: str) -> str:
    """A grammar for documents that validate against ``schema``; a schema llguidance cannot use is the caller's
    mistake (400 naming ``field``)."""
    import llguidance

    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_STYLE)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest.for_field(field, f"the JSON schema cannot be used: {exc}") from None
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise InvalidRequest.for_field(field, f"the JSON schema cannot be used: {problem.splitlines()[0]}")
    return grammar


ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def tool_call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One call of any of these tools: ``{"name": <tool>, "arguments": {...its parameters}}``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool["name"]}, "arguments": tool.get("parameters") or ANY_JSON_OBJECT},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}
